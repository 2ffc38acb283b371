"""Teacher LLMs behind one interface, a response cache, and a resumable validate-and-repair loop.

A teacher has a `.name` and `generate(list[Messages], Sampling) -> list[str]` (one reply per chat, in
order; a chat whose request failed for good on its own gets a `TeacherFailure` in its place). Two backends:

- `LocalTeacher`: a Hugging Face causal LM run in-process with batched generation (the `cpu` profile).
- `OpenAITeacher`: any OpenAI-compatible `/chat/completions` endpoint (vLLM, Ollama, a hosted API; the
  paper's Llama-3-70B), with bounded concurrency and retries. The API key is read from an environment
  variable at call time and never stored, printed or written to disk.

`make_teacher(cfg)` builds either one wrapped in a `CachedTeacher`, whose sqlite cache makes a killed
stage resume deterministically even when sampling at T=1. `run_records` drives a stage: it builds a
chat per record, parses each reply (raising `InvalidReply` to reject it), asks the teacher to repair
rejected replies, and appends accepted and rejected records to JSONL files as they happen. A failed
request (`TeacherFailure`) is rejected at once, is not cached, and is skipped on resume like any reject.

    teacher = make_teacher({"backend": "openai", "model": "m", "base_url": "http://host/v1",
                            "cache_path": "data/cache.sqlite"})
    stats = run_records(records, build_messages, parse, teacher, Sampling(temperature=1.0, seed=0),
                        "data/out.jsonl", "data/rejects.jsonl")
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from lib import decoding
from lib.decoding import Sampling  # the one sampling type; callers import it from here too
from lib.records import append_jsonl, check_ids, done_ids

log = logging.getLogger(__name__)

Messages = list[dict]


class TeacherError(RuntimeError):
    """The teacher cannot serve the stage: retries exhausted, or a misconfigured endpoint (auth, wrong URL)."""


class TeacherFailure(str):
    """Returned by `generate` in place of one chat's reply when its request failed for good on its own.

    Its text is empty, so code unaware of failures sees an empty reply. `.reason` is the reject code
    ("http_400", "empty_reply", "malformed_response"); `.detail` says what the endpoint answered (never
    the API key) and is written as the reject's reply.
    """

    reason: str
    detail: str

    def __new__(cls, reason: str, detail: str = "") -> Self:
        self = super().__new__(cls, "")
        self.reason, self.detail = reason, detail
        return self

    def __repr__(self) -> str:
        return f"TeacherFailure({self.reason!r}, {self.detail!r})"


class InvalidReply(ValueError):
    """A teacher reply that does not meet the output contract; `.reason` is a short code for counting."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------------
# Local backend


class LocalTeacher:
    """A Hugging Face chat model generating in batches in this process."""

    def __init__(self, model_dir: str | Path, batch_size: int = 8, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise ValueError(f"LocalTeacher: {self.model_dir} is not a Hugging Face model directory (no config.json)")
        self.name = f"local:{self.model_dir.name}"
        self.batch_size = batch_size
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        # Left padding keeps every prompt's last token at the end of the row, where generation continues.
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).to(device).eval()
        self.pad_token_id = decoding.pad_id(self.tokenizer)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.pad_token_id
        self.generated_tokens = 0  # running count of new tokens (stop tokens included), for throughput measurements

    def __repr__(self) -> str:
        return f"LocalTeacher({str(self.model_dir)!r}, batch_size={self.batch_size}, device={self.device!r})"

    def generate(self, prompts: Sequence[Messages], sampling: Sampling) -> list[str]:
        """One reply per chat, generated `batch_size` chats at a time (lib.decoding: stop ids, seeding, settings)."""
        out = decoding.generate_ids(self.model, self.tokenizer, decoding.chat_prompt_ids(self.tokenizer, prompts),
                                    sampling, batch_size=self.batch_size)
        self.generated_tokens += out.tokens
        return decoding.decode(self.tokenizer, out.ids)


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible backend

_RETRY_STATUS = {408, 409, 425, 429}
# Auth and routing errors mean the endpoint is misconfigured: rejecting every record for them would
# write the whole dataset off as rejects, which a resumed run then skips for good.
_CONFIG_STATUS = {401, 403, 404, 405, 407}


def _accepts(teacher: Any, param: str) -> bool:
    """Whether `teacher.generate` takes the keyword `param`."""
    try:
        return param in inspect.signature(teacher.generate).parameters
    except (TypeError, ValueError):
        return False


def _run_sync(coro_factory: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from sync code, also inside Jupyter where a loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    # A running loop (Jupyter kernel) cannot be re-entered: run a private loop in a worker thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()


class OpenAITeacher:
    """A model behind an OpenAI-compatible chat completions endpoint, queried concurrently with retries."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "TEACHER_API_KEY", max_concurrency: int = 8,
                 max_retries: int = 5, backoff_s: float = 1.0, timeout_s: float = 120.0):
        if max_concurrency < 1:
            raise ValueError(f"OpenAITeacher: max_concurrency must be >= 1, got {max_concurrency}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.name = f"openai:{model}"
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        # Only the variable's name: the key itself is never held by this object.
        return (f"OpenAITeacher(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
                f"max_concurrency={self.max_concurrency}, max_retries={self.max_retries})")

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _payload(self, messages: Messages, sampling: Sampling) -> dict:
        payload = {"model": self.model, "messages": list(messages), "temperature": sampling.temperature,
                   "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens}
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        if sampling.top_k is not None:  # an extension (vLLM takes it); sent only when asked for
            payload["top_k"] = sampling.top_k
        return payload

    def _redact(self, msg: str) -> str:
        # Belt and braces: a server could echo the Authorization header back in an error body.
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return msg.replace(key, "[redacted]") if key else msg

    def _error(self, msg: str) -> TeacherError:
        return TeacherError(self._redact(msg))

    def _failure(self, reason: str, msg: str) -> TeacherFailure:
        return TeacherFailure(reason, self._redact(msg))

    def _content(self, resp) -> str:
        """The reply text of a 200 response, or a TeacherFailure for a malformed body or empty content."""
        try:
            choice = resp.json()["choices"][0]
            content, finish = choice["message"]["content"], choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError):
            return self._failure("malformed_response", f"malformed response from {self.url}: {resp.text[:200]!r}")
        if content is None or (isinstance(content, str) and not content.strip()):
            return self._failure("empty_reply", f"empty content from {self.url} (finish_reason {finish!r})")
        if not isinstance(content, str):
            return self._failure("malformed_response", f"non-text content from {self.url}: {resp.text[:200]!r}")
        return content

    def _delay(self, attempt: int) -> float:
        # Exponential backoff with jitter so concurrent workers do not retry in lockstep.
        return self.backoff_s * (2 ** attempt) * (1.0 + random.random())

    async def _one(self, client, sem: asyncio.Semaphore, messages: Messages, sampling: Sampling) -> str:
        """The reply to one chat; a TeacherFailure for a 4xx of this request alone or an unusable 200 body.

        Raises TeacherError at once for a misconfiguration (401, 403, 404, 405, 407, or a status outside
        200/4xx/5xx), and when transport errors, 408/409/425/429 or 5xx outlast the retries: an endpoint
        that is down stops the stage instead of rejecting every record.
        """
        import httpx

        payload = self._payload(messages, sampling)
        last = ""
        for attempt in range(self.max_retries + 1):
            async with sem:
                try:
                    resp = await client.post(self.url, json=payload, headers=self._headers())
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}"
                    resp = None
            if resp is not None:
                status = resp.status_code
                if status == 200:
                    return self._content(resp)
                last = f"HTTP {status}"
                if status not in _RETRY_STATUS and status < 500:
                    msg = f"{last} from {self.url} (not retried): {resp.text[:200]!r}"
                    if 400 <= status < 500 and status not in _CONFIG_STATUS:
                        return self._failure(f"http_{status}", msg)
                    raise self._error(msg)
            if attempt < self.max_retries:
                await asyncio.sleep(self._delay(attempt))
        raise self._error(f"{last} from {self.url}: giving up after {self.max_retries + 1} attempts")

    async def agenerate(self, prompts: Sequence[Messages], sampling: Sampling | Sequence[Sampling],
                        on_reply: Callable[[int, str], None] | None = None) -> list[str]:
        """Async form of `generate`, for callers that already run an event loop."""
        import httpx

        samplings = _per_prompt(sampling, len(prompts))
        sem = asyncio.Semaphore(self.max_concurrency)
        limits = httpx.Limits(max_connections=self.max_concurrency)

        async def one(client, i: int, messages: Messages) -> str:
            reply = await self._one(client, sem, messages, samplings[i])
            if on_reply is not None:
                on_reply(i, reply)
            return reply

        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            tasks = [asyncio.ensure_future(one(client, i, m)) for i, m in enumerate(prompts)]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                # The stage stops: end the other requests before their client closes (what they
                # finished has already gone to on_reply).
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    def generate(self, prompts: Sequence[Messages], sampling: Sampling | Sequence[Sampling],
                 on_reply: Callable[[int, str], None] | None = None) -> list[str]:
        """One reply per chat, in order, at most `max_concurrency` requests in flight. `sampling`: one for every
        chat, or one per chat (e.g. each with its own seed).

        A chat whose request fails for good on its own gets a `TeacherFailure`, and the rest of the batch
        is kept; `on_reply(i, reply)` is called as soon as chat i's reply (or failure) is final. Raises
        TeacherError as `_one` does: retries exhausted or a misconfigured endpoint.
        """
        if not prompts:
            return []
        return _run_sync(lambda: self.agenerate(prompts, sampling, on_reply))


def _per_prompt(sampling: Sampling | Sequence[Sampling], n: int) -> list[Sampling]:
    if isinstance(sampling, Sampling):
        return [sampling] * n
    samplings = list(sampling)
    if len(samplings) != n:
        raise ValueError(f"{len(samplings)} samplings for {n} chats")
    return samplings


# --------------------------------------------------------------------------------------------------
# Cache


def cache_key(model: str, messages: Messages, sampling: Sampling, attempt: int = 0) -> str:
    """sha256 of everything that determines a reply, so a cached reply is only reused for the same request."""
    blob = json.dumps({"model": model, "messages": messages, "sampling": sampling.key(),
                       "attempt": attempt}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Replies on disk in sqlite, keyed by `cache_key`; committed on every `put_many`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        self._db.commit()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        """The cached replies among `keys`."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, str] = {}
        with self._lock:
            for i in range(0, len(keys), 500):  # stay under sqlite's bound-parameter limit
                chunk = keys[i:i + 500]
                rows = self._db.execute(f"SELECT key, reply FROM replies WHERE key IN ({','.join('?' * len(chunk))})",
                                        chunk)
                found.update(rows.fetchall())
        return found

    def put_many(self, items: dict[str, str]) -> None:
        """Store replies and commit."""
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO replies (key, reply) VALUES (?, ?)", list(items.items()))
            self._db.commit()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


class CachedTeacher:
    """Wraps a teacher so that only uncached chats are sent; replies come back in input order.

    Successful replies are stored as each one arrives when the teacher's `generate` takes `on_reply`
    (`OpenAITeacher`), else after its batch, so a kill mid-batch keeps finished replies. A `TeacherFailure`
    is never stored: a later run (say, with a fixed endpoint) asks again.
    """

    def __init__(self, teacher: Any, cache: ResponseCache):
        self.teacher = teacher
        self.cache = cache
        self.name = teacher.name
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedTeacher({self.teacher!r}, {self.cache!r})"

    def generate(self, prompts: Sequence[Messages], sampling: Sampling, attempt: int = 0) -> list[str]:
        """Replies for `prompts`; `attempt` separates repair rounds so they are not served an earlier reply."""
        keys = [cache_key(self.name, m, sampling, attempt) for m in prompts]
        found = self.cache.get_many(keys)
        # Identical chats share one key and therefore one reply: send each missing key once.
        missing = {k: m for k, m in zip(keys, prompts) if k not in found}
        if missing:
            sent = list(missing)

            def store(i: int, reply: str) -> None:
                if not isinstance(reply, TeacherFailure):
                    self.cache.put_many({sent[i]: reply})

            streamed = _accepts(self.teacher, "on_reply")
            if streamed:
                replies = self.teacher.generate(list(missing.values()), sampling, on_reply=store)
            else:
                replies = self.teacher.generate(list(missing.values()), sampling)
            if len(replies) != len(missing):
                raise TeacherError(f"{self.name} returned {len(replies)} replies for {len(missing)} prompts")
            new = dict(zip(sent, replies))
            if not streamed:
                self.cache.put_many({k: r for k, r in new.items() if not isinstance(r, TeacherFailure)})
            found.update(new)
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        return [found[k] for k in keys]


# Where an endpoint listens and how hard it is driven change how replies come, not what they say (the model id is
# kept): a new port, key variable, batch size or retry count resumes the same work.
SPEED_KEYS = ("base_url", "api_key_env", "batch_size", "max_concurrency", "max_retries")


def content_params(section: Mapping, drop: Iterable[str] = ()) -> dict:
    """A teacher stage's params without SPEED_KEYS (nor `drop`): what its resumable output's fingerprint holds."""
    dropped = set(SPEED_KEYS) | set(drop)
    return {k: v for k, v in section.items() if k not in dropped}


def from_params(section: Mapping, cache_path: str | Path | None = None) -> CachedTeacher:
    """The teacher a teacher stage's params section names (its `backend`, `model`, endpoint and speed keys), with the
    response cache at `cache_path` (default data/cache/teacher.sqlite, shared by every stage).

    A local teacher is a model 00_models prepared under models/base/ (the spec in `model`); an endpoint teacher is
    the served model's name there, and its API key is read from `api_key_env`, never stored."""
    from lib import config

    local = section["backend"] == "local"
    model = str(config.spec_dir(section["model"])) if local else section["model"]
    if local and not Path(model).is_dir():
        raise FileNotFoundError(f"teacher model {section['model']!r} is not prepared under models/base: a local "
                                "teacher must be a model 00_models prepares (run `dvc repro 00_models`)")
    return make_teacher({
        "backend": section["backend"], "base_url": section["base_url"], "api_key_env": section["api_key_env"],
        "model": model, "batch_size": section["batch_size"], "max_concurrency": section["max_concurrency"],
        "max_retries": section["max_retries"],
        "cache_path": str(cache_path or config.ROOT / "data" / "cache" / "teacher.sqlite")})


def make_teacher(cfg: dict) -> CachedTeacher:
    """Build the configured teacher wrapped in its response cache.

    Keys: backend ("local" | "openai"), model (a directory for local, the served model name for openai),
    cache_path, and optionally base_url, api_key_env, batch_size, device, max_concurrency, max_retries,
    backoff_s, timeout_s.
    """
    backend = cfg.get("backend")
    for key in ("model", "cache_path"):
        if not cfg.get(key):
            raise ValueError(f"teacher config: missing {key!r} (backend {backend!r})")
    if backend == "local":
        teacher: Any = LocalTeacher(cfg["model"], batch_size=cfg.get("batch_size", 8), device=cfg.get("device", "cpu"))
    elif backend == "openai":
        if not cfg.get("base_url"):
            raise ValueError("teacher config: backend 'openai' needs 'base_url'")
        teacher = OpenAITeacher(cfg["base_url"], cfg["model"], api_key_env=cfg.get("api_key_env", "TEACHER_API_KEY"),
                                max_concurrency=cfg.get("max_concurrency", 8), max_retries=cfg.get("max_retries", 5),
                                backoff_s=cfg.get("backoff_s", 1.0), timeout_s=cfg.get("timeout_s", 120.0))
    else:
        raise ValueError(f"teacher config: unknown backend {backend!r} (expected 'local' or 'openai')")
    return CachedTeacher(teacher, ResponseCache(cfg["cache_path"]))


# --------------------------------------------------------------------------------------------------
# Validate-and-repair loop


@dataclass
class RunStats:
    """Counts for one stage run; `reasons` counts every invalid reply (also ones later repaired) and failed request."""

    accepted: int = 0
    repaired: int = 0
    rejected: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0
    generated_chars: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted share of the items processed in this run (skipped ones excluded)."""
        done = self.accepted + self.rejected
        return self.accepted / done if done else 0.0

    def as_dict(self) -> dict:
        """Plain JSON-serialisable summary, for metrics files."""
        return {"accepted": self.accepted, "repaired": self.repaired, "rejected": self.rejected,
                "skipped": self.skipped, "acceptance_rate": self.acceptance_rate, "reasons": dict(self.reasons),
                "elapsed_s": self.elapsed_s, "generated_chars": self.generated_chars}


def default_repair_prompt(reason: str) -> str:
    """Generic repair instruction naming what was wrong."""
    return (f"That reply does not follow the instructions ({reason.replace('_', ' ')}). "
            "Write it again, following the required format exactly, and reply with nothing else.")


@dataclass
class Outcome:
    """Result of validating one chat: `value` when accepted, else the last `reason` and `reply`."""

    value: Any = None
    reason: str | None = None
    reply: str = ""
    repairs: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is None


def generate_validated(chats: list[Messages], parsers: list[Callable[[str], Any]], teacher: Any, sampling: Sampling,
                       max_repairs: int, repair_prompt: Callable[[str], str], stats: RunStats,
                       on_final: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
    """Generate a reply per chat, parse it, and re-ask (batched) for replies the parser rejects.

    A `TeacherFailure` reply is final at once, with its reason and detail as the outcome's reason and
    reply: re-asking would fail the same way. `on_final(i, outcome)` is called as soon as chat i is
    accepted or final, so callers can write it to disk before the remaining repairs run.
    """
    chats = [list(m) for m in chats]
    outcomes = [Outcome() for _ in chats]
    pending = list(range(len(chats)))
    pass_attempt = _accepts(teacher, "attempt")
    for attempt in range(max_repairs + 1):
        if not pending:
            break
        batch = [chats[i] for i in pending]
        replies = teacher.generate(batch, sampling, attempt=attempt) if pass_attempt else teacher.generate(batch, sampling)
        if len(replies) != len(batch):
            raise TeacherError(f"{teacher.name} returned {len(replies)} replies for {len(batch)} chats")
        still: list[int] = []
        for i, reply in zip(pending, replies):
            out = outcomes[i]
            out.repairs = attempt
            if isinstance(reply, TeacherFailure):
                out.reason, out.reply = reply.reason, reply.detail
                stats.reasons[reply.reason] += 1
                if on_final is not None:
                    on_final(i, out)
                continue
            stats.generated_chars += len(reply)
            out.reply = reply
            try:
                out.value, out.reason = parsers[i](reply), None
            except InvalidReply as exc:
                out.reason = exc.reason
                stats.reasons[exc.reason] += 1
                if attempt < max_repairs:
                    # The model sees its own bad reply and what was wrong with it (a new list: callers'
                    # and teachers' references to the earlier chat stay as they were).
                    chats[i] = chats[i] + [{"role": "assistant", "content": reply},
                                           {"role": "user", "content": repair_prompt(exc.reason)}]
                    still.append(i)
                    continue
            if on_final is not None:
                on_final(i, out)
        pending = still
    return outcomes


def run_records(records: Sequence[dict], build_messages: Callable[[dict], Messages],
                parse: Callable[[dict, str], dict], teacher: Any, sampling: Sampling, out_path: str | Path,
                rejects_path: str | Path, max_repairs: int = 2,
                repair_prompt: Callable[[str], str] = default_repair_prompt, batch_size: int = 16) -> RunStats:
    """Resumably turn records into validated teacher outputs, appending each to out_path or rejects_path.

    Accepted outputs are `parse(record, reply)` plus the record's "id" and "repairs" (repair rounds used);
    rejects are {"id", "reason", "reply"} with the last reply (a failed request's detail for a
    `TeacherFailure`). A reject is never retried: a resumed run skips it like an accepted record.
    """
    t0 = time.perf_counter()
    check_ids(records)
    stats = RunStats()
    done = done_ids(out_path, rejects_path)
    todo = [r for r in records if r["id"] not in done]
    stats.skipped = len(records) - len(todo)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        parsers = [lambda reply, rec=rec: parse(rec, reply) for rec in batch]

        def write(i: int, out: Outcome, batch: list[dict] = batch) -> None:
            rid = batch[i]["id"]
            if out.ok:
                if not isinstance(out.value, dict):
                    raise TypeError(f"parse() must return a dict, got {type(out.value).__name__} for record {rid!r}")
                value = {k: v for k, v in out.value.items() if k not in ("id", "repairs")}
                append_jsonl(out_path, {"id": rid, **value, "repairs": out.repairs})
                stats.accepted += 1
                stats.repaired += out.repairs > 0
            else:
                append_jsonl(rejects_path, {"id": rid, "reason": out.reason, "reply": out.reply})
                stats.rejected += 1

        generate_validated([build_messages(r) for r in batch], parsers, teacher, sampling, max_repairs, repair_prompt,
                           stats, on_final=write)
        log.info("run_records: %d/%d done (accepted %d, rejected %d)", start + len(batch), len(todo),
                 stats.accepted, stats.rejected)
    stats.elapsed_s = time.perf_counter() - t0
    return stats
