"""Student generation through a vLLM server (OpenAI-compatible) with the stage's LoRA adapters loaded.

On the paper profile a generation stage with `backend: vllm` sends its chats to `vllm serve`, which batches them
continuously on the GPU, instead of decoding them with Hugging Face `generate` in this process. The server holds the
base model and every adapter the stage compares; a request names the one it wants (`model`: the base model's id, or
an adapter's name). Start the server before the stage, with the command the stage prints (`serve_command`):

    vllm serve meta-llama/Meta-Llama-3-8B-Instruct --port 8002 --api-key $VLLM_API_KEY --gpu-memory-utilization 0.6 \\
        --enable-lora --max-lora-rank 16 --lora-modules sft=models/sft/big5chat/adapter dpo=models/dpo/big5chat/adapter

vLLM applies the model's own chat template and stops at its generation config's EOS ids, as lib.decoding does; each
request carries its seed, so a sampled answer does not depend on what else is in flight. Log-likelihood scoring,
DExperts and the DPG hypernetwork stay in this process: they need logits or per-sample weights.

    student = ServedStudent(p["served"], model_id, {"sft": sft_dir, "dpo": dpo_dir})
    student.check()                                   # the server holds the base model and both adapters
    replies = student.generate_chat(chats, "dpo", max_new_tokens=128, temperature=0.6, top_p=0.9, seed=0)
"""
from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

from lib.decoding import Sampling
from lib.teacher import OpenAITeacher, TeacherError, TeacherFailure

Messages = list[dict]


VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's LoRAConfig accepts only these --max-lora-rank values


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds an adapter of `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})")


def serve_command(model: str, adapters: Mapping[str, str | Path], port: int, max_lora_rank: int,
                  api_key_env: str | None, gpu_memory_utilization: float = 0.9, served_name: str | None = None) -> str:
    """The `vllm serve` command line that holds `model` (under `served_name` if given) and every adapter under its
    name. vLLM reserves `gpu_memory_utilization` of the GPU (its default 0.9); a stage that also loads the model
    itself needs less. `max_lora_rank` is rounded up to a value vLLM accepts."""
    modules = " ".join(f"{name}={path}" for name, path in adapters.items())
    key = f" --api-key ${api_key_env}" if api_key_env else ""
    name = f" --served-model-name {served_name}" if served_name else ""
    return (f"vllm serve {model}{name} --port {port}{key} --gpu-memory-utilization {gpu_memory_utilization:g} "
            f"--enable-lora --max-lora-rank {vllm_max_lora_rank(max_lora_rank)} --lora-modules {modules}")


def adapter_rank(adapter_dir: str | Path) -> int:
    """The LoRA rank saved in an adapter's adapter_config.json (vLLM's --max-lora-rank must be at least this)."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        return int(json.loads(path.read_text())["r"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: cannot read the adapter's rank ({exc})") from None


class ServedStudent:
    """The student's base model and adapters behind one `vllm serve` endpoint.

    `cfg`: base_url, api_key_env, max_concurrency, max_retries (the stage's `served` params). `adapters` maps the
    names requests use to the adapter directories the server must load. `served_name`: the name the base model is
    served and requested under when it is not `model` itself (a local folder, as PersLLM's personified base).
    """

    def __init__(self, cfg: Mapping, model: str, adapters: Mapping[str, str | Path], served_name: str | None = None):
        self.path = model
        self.served_name = served_name
        self.model = served_name or model
        self.adapters = dict(adapters)
        self.base_url = cfg["base_url"].rstrip("/")
        self.api_key_env = cfg.get("api_key_env")
        self.max_concurrency = cfg.get("max_concurrency", 64)
        self.max_retries = cfg.get("max_retries", 5)
        self.timeout_s = cfg.get("timeout_s", 600.0)
        self.gpu_memory_utilization = cfg.get("gpu_memory_utilization", 0.9)

    def command(self) -> str:
        port = urllib.parse.urlsplit(self.base_url).port or 8000
        rank = max([adapter_rank(d) for d in self.adapters.values()] or [16])
        return serve_command(self.path, self.adapters, port, rank, self.api_key_env, self.gpu_memory_utilization,
                             self.served_name)

    def check(self) -> list[str]:
        """The names the server holds; a TeacherError naming the missing ones (and the command) if any is absent."""
        import httpx

        teacher = self._client(self.model)
        try:
            resp = httpx.get(self.base_url + "/models", headers=teacher._headers(), timeout=30.0)
        except httpx.TransportError as exc:
            raise TeacherError(f"no vLLM server at {self.base_url} ({type(exc).__name__}); start it with:\n"
                               f"  {self.command()}") from None
        if resp.status_code != 200:
            raise TeacherError(teacher._redact(f"HTTP {resp.status_code} from {self.base_url}/models: "
                                               f"{resp.text[:200]!r}"))
        served = [m.get("id") for m in resp.json().get("data", [])]
        missing = [name for name in (self.model, *self.adapters) if name not in served]
        if missing:
            raise TeacherError(f"the server at {self.base_url} does not hold {missing} (it serves {served}); "
                               f"restart it with:\n  {self.command()}")
        return served

    def _client(self, name: str) -> OpenAITeacher:
        return OpenAITeacher(self.base_url, name, api_key_env=self.api_key_env, max_concurrency=self.max_concurrency,
                             max_retries=self.max_retries, timeout_s=self.timeout_s)

    def generate_chat(self, chats: Sequence[Messages], adapter: str | None, max_new_tokens: int,
                      temperature: float = 0.0, top_p: float = 1.0, seed: int | Sequence[int] = 0) -> list[str]:
        """One reply per chat from the base model (`adapter` None) or the named adapter, stripped, in order.

        `seed`: one seed for every request, or one per chat. vLLM seeds each request on its own, so two requests
        with the same chat and seed get the same reply: samples meant to differ need their own seeds."""
        if adapter is not None and adapter not in self.adapters:
            raise ValueError(f"adapter {adapter!r} is not one this stage serves: {sorted(self.adapters)}")
        chats = list(chats)
        seeds = [seed] * len(chats) if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != len(chats):
            raise ValueError(f"{len(seeds)} seeds for {len(chats)} chats")
        samplings = [Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=s)
                     for s in seeds]
        replies = self._client(adapter or self.model).generate(chats, samplings)
        # A student may well stop at once: an empty reply is an answer (as from generate), any other failure is not.
        failed = [(i, r) for i, r in enumerate(replies) if isinstance(r, TeacherFailure) and r.reason != "empty_reply"]
        if failed:
            i, first = failed[0]
            raise TeacherError(f"{len(failed)} of {len(replies)} requests to {adapter or self.model} failed; "
                               f"chat {i}: {first.reason}: {first.detail}")
        return [str(r).strip() for r in replies]

    def generate_fn(self, adapter: str | None, top_p: float = 1.0):
        """A psychometrics GenerateFn (chats, temperature, max_new_tokens, seed) on the base or an adapter."""

        def generate(chats: list[Messages], temperature: float, max_new_tokens: int, seed: int) -> list[str]:
            return self.generate_chat(chats, adapter, max_new_tokens, temperature, top_p, seed)

        return generate
