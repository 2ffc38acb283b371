"""BIG5-CHAT's reasoning evaluation: the lm-evaluation-harness's own task definitions, run on the offline mirror.

BIG5-CHAT (arXiv 2410.16491) scores its trait-trained models with lm-eval (`--apply_chat_template`,
`--system_instruction "<persona prompt>"`, default shots). The harness's YAMLs read the Hub; here each task gets a
local YAML that `include:`s the installed harness's own YAML and overrides only the dataset (JSONL written from
/work/shared/data/reasoning, see its README) and the task name, so prompts, shots, filters and metrics stay the
harness's.

    dirs = write_tasks(reasoning_dir, "out/tasks", {"piqa": 200, "gsm8k": 50}, seed=0)   # task -> lm-eval names
    lm = harness_model("models/sft", peft="models/sft/lora_C_high")
    records = evaluate(lm, "out/tasks", sum(dirs.values(), []), persona_instruction("C", "high"))
    accuracy(records, by=["task"])                  # mean with a bootstrap interval
    level_difference(all_records)                   # high - low per method x trait x task, against the paper's sign

`records` has one row per item and metric: task, doc_id, metric, score (plus lm_eval_task, prompt, output).
"""
from __future__ import annotations

import csv
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from lib.big5chat import persona_instruction  # noqa: F401  (the SFT/DPO prompt, re-exported)
from lib.stats import direction, mean_ci, verdict
from lib.traits import LEVELS, NAMES, TRAITS

TASKS = ("gsm8k", "mathqa", "truthfulqa_mc1", "truthfulqa_mc2", "commonsense_qa", "piqa", "social_iqa", "mmlu")

# Per-item metrics kept, primary first. lm-eval names a filtered metric "<metric>,<filter>"; unfiltered ones
# (filter "none") keep the bare name. mc2's acc is the normalised probability of the true answers (a float).
METRICS = {
    "gsm8k": ("exact_match,strict-match", "exact_match,flexible-extract"),
    "mathqa": ("acc", "acc_norm"),
    "truthfulqa_mc1": ("acc",),
    "truthfulqa_mc2": ("acc",),
    "commonsense_qa": ("acc",),
    "piqa": ("acc", "acc_norm"),
    "social_iqa": ("acc",),
    "mmlu": ("acc",),
}
PRIMARY = {task: metrics[0] for task, metrics in METRICS.items()}

# BIG5-CHAT's abstract: higher C and A, lower E and N go with better reasoning; nothing is claimed for O.
EXPECTED = {"O": None, "C": "positive", "E": "negative", "A": "positive", "N": "negative"}
NO_CLAIM = "no claim in the paper"

# Harness tasks read from the Hub as the harness defines them (the paper profile's `hub_tasks`; GPQA is gated).
HUB_METRICS = {"gpqa_main_zeroshot": ("acc", "acc_norm"), "gpqa_main_n_shot": ("acc", "acc_norm"),
               "gpqa_main_cot_zeroshot": ("exact_match,strict-match", "exact_match,flexible-extract"),
               "gpqa_main_cot_n_shot": ("exact_match,strict-match", "exact_match,flexible-extract")}
PRIMARY |= {task: metrics[0] for task, metrics in HUB_METRICS.items()}

PREFIX = "b5_"  # local task names, so they never shadow the harness's Hub-backed ones

# The installed harness's YAML for each task, relative to lm_eval/tasks/ (MMLU: one per subject).
HARNESS_YAML = {
    "gsm8k": "gsm8k/gsm8k.yaml",
    "mathqa": "mathqa/mathqa.yaml",
    "truthfulqa_mc1": "truthfulqa/truthfulqa_mc1.yaml",
    "truthfulqa_mc2": "truthfulqa/truthfulqa_mc2.yaml",
    "commonsense_qa": "commonsense_qa/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "social_iqa": "siqa/siqa.yaml",
    "mmlu": "mmlu/default/mmlu_{subject}.yaml",
}

MATHQA_FIELDS = ("Problem", "Rationale", "options", "correct", "annotated_formula", "linear_formula", "category")
MMLU_LETTERS = "ABCD"


def prompting_instruction(trait: str, level: str) -> str:
    """The prompting baseline's system prompt, from the authors' eval scripts: "You are a person with high openness."

    The README gives the pattern `You are a person with <level> <trait>.`; the trait name is lower case there.
    """
    if trait not in TRAITS or level not in LEVELS:
        raise ValueError(f"unknown trait {trait!r} or level {level!r}; expected one of {list(TRAITS)} and {LEVELS}")
    return f"You are a person with {level} {NAMES[trait].lower()}."


# ---------------------------------------------------------------------------------------------------------------
# Loading the mirror into the fields of the Hub datasets lm-eval reads


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"reasoning mirror file not found: {path}")
    return path


def _read_jsonl(path: Path, fields: Sequence[str]) -> list[dict]:
    """Rows of a JSONL file, each checked for `fields`; errors name the file and line."""
    rows = []
    for n, line in enumerate(_require(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc})") from exc
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise ValueError(f"{path}:{n}: missing fields {missing}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _read_json(path: Path):
    try:
        return json.loads(_require(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc


def _read_labels(path: Path, docs_path: Path, n_docs: int, allowed: set[str]) -> list[str]:
    """One label a line, aligned with the docs file line for line."""
    labels = [line.strip() for line in _require(path).read_text(encoding="utf-8").splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if len(labels) != n_docs:
        raise ValueError(f"{path}: {len(labels)} labels but {n_docs} docs in {docs_path}; the files must align")
    bad = [(i, lab) for i, lab in enumerate(labels, start=1) if lab not in allowed]
    if bad:
        raise ValueError(f"{path}:{bad[0][0]}: label {bad[0][1]!r} not in {sorted(allowed)}")
    return labels


def _mmlu(folder: Path, split: str) -> list[dict]:
    """cais/mmlu rows (question, subject, choices, answer 0-3) from data/<split>/<subject>_<split>.csv, by subject."""
    if not folder.is_dir():
        raise FileNotFoundError(f"reasoning mirror folder not found: {folder}")
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise FileNotFoundError(f"no MMLU *_{split}.csv files in {folder}")
    rows = []
    for path in files:
        subject = path.name[: -len(f"_{split}.csv")]
        with path.open(encoding="utf-8", newline="") as fh:
            for n, rec in enumerate(csv.reader(fh), start=1):
                if len(rec) != 6:
                    raise ValueError(f"{path}:{n}: {len(rec)} columns, expected 6 (question, A, B, C, D, answer)")
                if rec[5] not in MMLU_LETTERS:
                    raise ValueError(f"{path}:{n}: answer {rec[5]!r} is not one of A-D")
                rows.append({"question": rec[0], "subject": subject, "choices": rec[1:5],
                             "answer": MMLU_LETTERS.index(rec[5])})
    return rows


def load_items(reasoning_dir: str | Path, task: str, split: str | None = None) -> list[dict]:
    """The mirror's docs for `task` with exactly the fields of the Hub dataset lm-eval loads, in file order.

    `split` defaults to the split the harness evaluates; "train" (GSM8K) and "dev" (MMLU) give the few-shot pools.
    """
    root = Path(reasoning_dir)
    if task not in TASKS:
        raise ValueError(f"unknown reasoning task {task!r}; expected one of {list(TASKS)}")
    pools = {"gsm8k": "train", "mmlu": "dev"}
    if split is not None and split != pools.get(task):
        raise ValueError(f"{task}: the mirror has no split {split!r} besides the evaluated one "
                         f"(few-shot pool: {pools.get(task)})")
    if task == "gsm8k":
        path = root / "gsm8k" / ("train.jsonl" if split == "train" else "test.jsonl")
        return [{"question": r["question"], "answer": r["answer"]} for r in _read_jsonl(path, ("question", "answer"))]
    if task == "mmlu":
        split = split or "test"
        return _mmlu(root / "mmlu" / "data" / split, split)
    if task == "mathqa":
        path = root / "mathqa" / "test.json"
        data = _read_json(path)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of problems, got {type(data).__name__}")
        for i, row in enumerate(data):
            missing = [f for f in MATHQA_FIELDS if not isinstance(row, dict) or f not in row]
            if missing:
                raise ValueError(f"{path}: item {i} is missing fields {missing}")
        return [{f: row[f] for f in MATHQA_FIELDS} for row in data]
    if task.startswith("truthfulqa"):
        path = root / "truthfulqa" / "data" / "v0" / "mc_task.json"  # v0 = the release HF truthful_qa pins
        data = _read_json(path)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
        items = []
        for i, row in enumerate(data):
            if not (isinstance(row, dict) and isinstance(row.get("question"), str)
                    and all(isinstance(row.get(k), dict) and row[k] for k in ("mc1_targets", "mc2_targets"))):
                raise ValueError(f"{path}: item {i} needs question and non-empty mc1_targets/mc2_targets dicts")
            items.append({"question": row["question"],
                          **{k: {"choices": list(row[k]), "labels": [int(v) for v in row[k].values()]}
                             for k in ("mc1_targets", "mc2_targets")}})
        return items
    if task == "commonsense_qa":
        path = root / "commonsense_qa" / "dev_rand_split.jsonl"
        items = []
        for n, row in enumerate(_read_jsonl(path, ("id", "question", "answerKey")), start=1):
            q = row["question"]
            if not (isinstance(q, dict) and "stem" in q and isinstance(q.get("choices"), list)):
                raise ValueError(f"{path}: row {n} has no question.stem / question.choices")
            items.append({"id": row["id"], "question": q["stem"], "question_concept": q.get("question_concept", ""),
                          "choices": {"label": [c["label"] for c in q["choices"]],
                                      "text": [c["text"] for c in q["choices"]]},
                          "answerKey": row["answerKey"]})
        return items
    if task == "piqa":
        docs_path, labels_path = root / "piqa" / "valid.jsonl", root / "piqa" / "valid-labels.lst"
        docs = _read_jsonl(docs_path, ("goal", "sol1", "sol2"))
        labels = _read_labels(labels_path, docs_path, len(docs), {"0", "1"})
        return [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": int(lab)}
                for d, lab in zip(docs, labels)]
    # social_iqa: HF social_i_qa keeps the label as the string "1".."3"; lm-eval's target is label|int - 1
    fields = ("context", "question", "answerA", "answerB", "answerC")
    docs_path, labels_path = root / "social_iqa" / "dev.jsonl", root / "social_iqa" / "dev-labels.lst"
    docs = _read_jsonl(docs_path, fields)
    labels = _read_labels(labels_path, docs_path, len(docs), {"1", "2", "3"})
    return [{**{f: d[f] for f in fields}, "label": lab} for d, lab in zip(docs, labels)]


# ---------------------------------------------------------------------------------------------------------------
# Local task YAMLs that include the harness's own


def harness_tasks_dir() -> Path:
    """lm_eval/tasks/ of the installed harness."""
    import lm_eval

    return Path(lm_eval.__file__).resolve().parent / "tasks"


def harness_yaml(task: str, subject: str | None = None) -> Path:
    """Absolute path of the installed harness's YAML for a task (MMLU: for one subject)."""
    if task not in TASKS:
        raise ValueError(f"unknown reasoning task {task!r}; expected one of {list(TASKS)}")
    if (task == "mmlu") != (subject is not None):
        raise ValueError("a subject is needed for mmlu, and only for mmlu")
    path = harness_tasks_dir() / HARNESS_YAML[task].format(subject=subject)
    if not path.is_file():
        raise FileNotFoundError(f"the installed lm_eval has no task YAML {path}")
    return path


def harness_config(task: str, subject: str | None = None) -> dict:
    """The harness's task config with its includes merged (functions left unresolved)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(harness_yaml(task, subject), resolve_func=False)


def _splits(config: dict) -> tuple[str, str]:
    """(split evaluated, split the few-shot sampler is built from), as lm-eval 0.4.13 picks them.

    The harness builds its sampler even at 0 shots (from fewshot_split, else training, else validation split), so
    that split must exist in data_files.
    """
    eval_split = config.get("test_split") or config.get("validation_split")
    pool = (config.get("fewshot_split") or config.get("training_split") or config.get("validation_split")
            or eval_split)
    if not eval_split:
        raise ValueError(f"task {config.get('task')}: no test or validation split in the harness config")
    return eval_split, pool


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _write_task(out: Path, name: str, include: Path, data_files: dict[str, str]) -> None:
    import yaml

    config = {"include": str(include), "task": name, "dataset_path": "json", "dataset_name": None,
              "dataset_kwargs": {"data_files": data_files}}
    (out / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")


def sample_items(items: list[dict], limit: int | None, seed: int = 0) -> list[dict]:
    """A seeded random sample of `limit` items, kept in file order (all of them for None)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]


def write_tasks(reasoning_dir: str | Path, out_dir: str | Path, limits: Mapping[str, int | None] | None = None,
                seed: int = 0) -> dict[str, list[str]]:
    """Write a seeded subsample of each task as JSONL plus a local YAML including the harness's; returns
    task -> the lm-eval task names to run (MMLU: one `b5_mmlu_<subject>` per subject in the sample).

    Args:
        limits: task -> number of items (None = all); its keys are the tasks written. None: every task, all items.

    Every doc carries `item_id`, its index in `load_items` order, so rows pair across runs. The few-shot pools are
    the mirror's GSM8K train (5-shot) and MMLU dev (unused at the harness's 0 shots). Other 0-shot tasks have no
    pool in the mirror: their pool split points at the eval file, which lm-eval only reads to build a sampler it
    never draws from at 0 shots (`evaluate` passes no num_fewshot).
    """
    limits = dict.fromkeys(TASKS) if limits is None else dict(limits)
    unknown = sorted(set(limits) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown reasoning tasks {unknown}; expected some of {list(TASKS)}")
    out_root = Path(out_dir).resolve()
    names: dict[str, list[str]] = {}
    for task in [t for t in TASKS if t in limits]:
        items = [{**item, "item_id": i} for i, item in enumerate(load_items(reasoning_dir, task))]
        sample = sample_items(items, limits[task], seed)
        folder = out_root / task
        if task == "mmlu":
            pool = load_items(reasoning_dir, "mmlu", split="dev")
            names[task] = []
            for subject in sorted({item["subject"] for item in sample}):
                include = harness_yaml("mmlu", subject)
                eval_split, pool_split = _splits(harness_config("mmlu", subject))
                test = _write_jsonl(folder / subject / f"{eval_split}.jsonl",
                                    [it for it in sample if it["subject"] == subject])
                shots = _write_jsonl(folder / subject / f"{pool_split}.jsonl",
                                     [{**it, "item_id": -1 - i} for i, it in enumerate(pool)
                                      if it["subject"] == subject])
                name = f"{PREFIX}mmlu_{subject}"
                _write_task(folder / subject, name, include, {eval_split: str(test), pool_split: str(shots)})
                names[task].append(name)
            continue
        include = harness_yaml(task)
        eval_split, pool_split = _splits(harness_config(task))
        data_files = {eval_split: str(_write_jsonl(folder / f"{eval_split}.jsonl", sample))}
        if pool_split != eval_split:
            if task == "gsm8k":  # the 5-shot pool; negative ids keep them apart from test items
                pool = [{**it, "item_id": -1 - i} for i, it in enumerate(load_items(reasoning_dir, task, "train"))]
                data_files[pool_split] = str(_write_jsonl(folder / f"{pool_split}.jsonl", pool))
            else:
                data_files[pool_split] = data_files[eval_split]
        name = f"{PREFIX}{task}"
        _write_task(folder, name, include, data_files)
        names[task] = [name]
    return names


def mirror_task(name: str) -> str:
    """The mirror task of a local lm-eval task name: b5_mmlu_anatomy -> mmlu, b5_piqa -> piqa."""
    if not name.startswith(PREFIX):
        raise ValueError(f"{name!r} is not a local reasoning task (prefix {PREFIX!r})")
    task = name[len(PREFIX):]
    return "mmlu" if task.startswith("mmlu_") else task


# ---------------------------------------------------------------------------------------------------------------
# Running the harness


def harness_model(pretrained: str, peft: str | None = None, batch_size: int | str = 1, max_length: int | None = None,
                  **kwargs):
    """lm-eval's HFLM on the GPU if there is one, else the CPU, with a LoRA adapter through its own `peft=`
    (the authors' `--model_args pretrained=...,peft=<LoRA>`). kwargs go to HFLM (e.g. dtype)."""
    import torch
    from lm_eval.models.huggingface import HFLM

    cuda = torch.cuda.is_available()
    kwargs.setdefault("dtype", "auto" if cuda else "float32")  # bf16 matmuls are slow on most CPUs
    return HFLM(pretrained=str(pretrained), peft=str(peft) if peft else None, batch_size=batch_size,
                max_length=max_length, device="cuda" if cuda else "cpu", **kwargs)


def _output(sample: dict, output_type: str):
    """What the model returned: the generated text, or one log-likelihood per choice."""
    resps = sample["resps"]
    if output_type == "generate_until":
        return resps[0][0] if resps and resps[0] else ""
    return [float(r[0][0]) for r in resps]


def evaluate(lm, task_dir: str | Path | None, task_names: Sequence[str], system_instruction: str | None,
             gen_kwargs: str | dict | None = None, seed: int = 0, fewshot_as_multiturn: bool = False) -> pd.DataFrame:
    """One `lm_eval.simple_evaluate` over the local tasks, as the authors ran it (chat template, persona as the
    system instruction, each task's default shots); one row per item and kept metric.

    Args:
        gen_kwargs: only touches generate_until tasks (GSM8K), e.g. "max_gen_toks=96" so a CPU profile can shorten
            GSM8K's generation; None keeps the harness's (greedy, until "Question:", up to 256 tokens).
        seed: python's seed; numpy, torch and the few-shot sampler get 1234 + seed (seed 0 = the lm-eval CLI's
            defaults "0,1234,1234,1234", which the authors ran with).
        fewshot_as_multiturn: False as in the authors' harness, where it was an opt-in flag they did not pass
            (0.4.13 turns it on by default with a chat template): GSM8K's 5 shots sit in one user turn.

    `task_dir` None runs harness tasks from the Hub by their own names (HUB_METRICS: the paper profile's GPQA), with
    the harness's task index and its datasets; doc_id is then the harness's doc index.

    Returns: task (mmlu subjects folded into "mmlu"), doc_id (the doc's item_id), metric, score, lm_eval_task,
    prompt (the first request's rendered context) and output (generated text or per-choice log-likelihoods).
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_names = list(task_names)
    hub = task_dir is None
    for name in task_names:
        if hub and name not in HUB_METRICS:
            raise ValueError(f"{name!r} is not a Hub task this stage knows; expected one of {sorted(HUB_METRICS)}")
        if not hub:
            mirror_task(name)
    other = 1234 + seed
    # include_defaults=False: the local YAMLs include the harness's files by path, so indexing its ~10k other
    # configs (several seconds) is not needed
    manager = TaskManager() if hub else TaskManager(include_path=str(task_dir), include_defaults=False)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=task_names, task_manager=manager,
        apply_chat_template=True, fewshot_as_multiturn=fewshot_as_multiturn, system_instruction=system_instruction,
        log_samples=True, gen_kwargs=gen_kwargs, bootstrap_iters=0, random_seed=seed, numpy_random_seed=other,
        torch_random_seed=other, fewshot_random_seed=other)
    rows = []
    for name in task_names:
        task = name if hub else mirror_task(name)
        kept = HUB_METRICS[name] if hub else METRICS[task]
        output_type = results["configs"][name]["output_type"]
        samples = results["samples"].get(name)
        if not samples:
            raise RuntimeError(f"lm-eval logged no samples for {name}")
        for sample in samples:
            for metric in sample["metrics"]:
                key = metric if sample["filter"] == "none" else f"{metric},{sample['filter']}"
                if key not in kept:
                    continue
                rows.append({"task": task, "doc_id": sample["doc_id"] if hub else sample["doc"]["item_id"],
                             "metric": key,
                             "score": float(sample[metric]), "lm_eval_task": name,
                             "prompt": sample["arguments"][0][0], "output": _output(sample, output_type)})
    return pd.DataFrame(rows, columns=["task", "doc_id", "metric", "score", "lm_eval_task", "prompt", "output"])


# ---------------------------------------------------------------------------------------------------------------
# Summaries


def _primary(records: pd.DataFrame) -> pd.DataFrame:
    """Rows of each task's primary metric (all rows when there is no metric column)."""
    if "metric" not in records.columns:
        return records
    return records[records["metric"] == records["task"].map(PRIMARY)]


def accuracy(records: pd.DataFrame, by: str | Sequence[str] = ("task",)) -> pd.DataFrame:
    """Mean score per group with its percentile-bootstrap 95% interval (resampling items); grouped by metric too."""
    by = [by] if isinstance(by, str) else list(by)
    if "metric" in records.columns and "metric" not in by:
        by.append("metric")  # never average acc with acc_norm or strict with flexible
    missing = [c for c in [*by, "score"] if c not in records.columns]
    if missing:
        raise ValueError(f"records have no columns {missing} (columns: {list(records.columns)})")
    rows = [{**dict(zip(by, key if isinstance(key, tuple) else (key,))), **mean_ci(group["score"])}
            for key, group in records.groupby(by, sort=True)]
    return pd.DataFrame(rows, columns=[*by, "mean", "lo", "hi", "n"])


def level_difference(records: pd.DataFrame) -> pd.DataFrame:
    """High minus low score per method x trait x task, paired by doc_id, with its interval and the paper's verdict.

    `records` needs method, trait, level, task, doc_id, score; with a metric column only each task's primary metric
    is used. Items scored at one level only are dropped (n counts pairs).
    """
    need = ["method", "trait", "level", "task", "doc_id", "score"]
    missing = [c for c in need if c not in records.columns]
    if missing:
        raise ValueError(f"records have no columns {missing} (columns: {list(records.columns)})")
    data = _primary(records)
    bad = sorted(set(data["trait"]) - set(TRAITS))
    if bad:
        raise ValueError(f"unknown traits {bad}; expected some of {list(TRAITS)}")
    keys = ["method", "trait", "task", "doc_id"]
    dup = data.duplicated([*keys, "level"])
    if dup.any():
        raise ValueError(f"{int(dup.sum())} duplicate rows for the same method, trait, task, doc_id and level")
    wide = data.pivot_table(index=keys, columns="level", values="score", aggfunc="first")
    for level in ("high", "low"):
        if level not in wide.columns:
            wide[level] = float("nan")
    wide = (wide["high"] - wide["low"]).dropna().rename("diff").reset_index()
    rows = []
    for (method, trait, task), group in wide.groupby(["method", "trait", "task"], sort=True):
        summary = mean_ci(group["diff"])
        expected = EXPECTED[trait]
        rows.append({"method": method, "trait": trait, "task": task, **summary, "expected": expected or "none",
                     "direction": direction(summary["lo"], summary["hi"]),
                     "verdict": verdict(summary["lo"], summary["hi"], expected) if expected else NO_CLAIM})
    return pd.DataFrame(rows, columns=["method", "trait", "task", "mean", "lo", "hi", "n", "expected", "direction",
                                       "verdict"])
