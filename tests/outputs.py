"""What a DAG run produced, as one digest per file, for comparing two runs byte for byte.

    python -m tests.outputs RUN_A RUN_B      # compare two repositories after `dvc repro`; exit 1 on a difference
    python -m tests.outputs RUN_A > a.json   # the manifest of one run

Every file under data/, models/, reports/ and figures/ counts, byte for byte, except the few that record when or how
fast something ran, or where, rather than what it computed. Those are listed in VOLATILE with the reason. Two
normalisations, each for a reason that is not a result:
- metrics files (reports/metrics/*.json, */train_metrics.json) are compared without their timing keys (TIMING),
  so the rest of them still has to match exactly;
- the checkout's own absolute path, which transformers, peft and the classifier write into model files
  (adapter_config.json, README.md, meta.json), is replaced by "<repo>" in every file.
Sets that libraries write (peft's target_modules, a model card's tags) come out in one order because
lib/run_notebook.py fixes PYTHONHASHSEED for every kernel.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import sys
from pathlib import Path

OUTPUT_DIRS = ("data", "models", "reports", "figures")

VOLATILE = {  # fnmatch patterns: "*" also matches "/"
    "reports/notebooks/*.ipynb": "papermill records start/end times and durations in each executed notebook",
    "*/COMPLETE": "a resumable output's completion stamp holds the time it finished",
    "data/cache/*": "the teacher's response cache (SQLite) stores when each answer was cached",
    "*/trainer_state.json": "a trainer checkpoint's state logs runtimes and throughput",
    "*/07_dexperts/generation_seconds.json": "how long 07's generation took, kept so that a resumed run reports it",
    "models/hypernet/*/checkpoints/*.pt": "a hypernetwork checkpoint keeps the training time so far, so that a "
                                          "resumed run reports its whole runtime",
    "*/training_args.bin": "torch.save of the TrainingArguments: the absolute output_dir sits inside a zip whose "
                           "layout shifts with the folder name's length",
}
TIMING = re.compile(r"(_s|_mb|runtime|seconds)$")  # elapsed_s, samples_per_s, train_runtime_s, peak_memory_mb


def is_volatile(rel: str) -> bool:
    return any(fnmatch.fnmatch(rel, pattern) for pattern in VOLATILE)


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if not TIMING.search(str(k))}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def digest(path: Path, rel: str, repo: Path) -> str:
    raw = path.read_bytes().replace(str(repo.resolve()).encode(), b"<repo>").replace(str(repo).encode(), b"<repo>")
    if rel.endswith(".json") and (rel.startswith("reports/metrics/") or rel.endswith("metrics.json")):
        raw = json.dumps(_without_timings(json.loads(raw)), sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()


def manifest(repo: Path) -> dict[str, str]:
    """{relative path: sha256} of every non-volatile output file of a run."""
    out = {}
    for top in OUTPUT_DIRS:
        for path in sorted((repo / top).rglob("*")):
            rel = path.relative_to(repo).as_posix()
            if path.is_file() and not is_volatile(rel):
                out[rel] = digest(path, rel, repo)
    return out


def differences(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Human-readable differences between two manifests (empty when they match)."""
    lines = [f"only in the first run: {p}" for p in sorted(set(a) - set(b))]
    lines += [f"only in the second run: {p}" for p in sorted(set(b) - set(a))]
    lines += [f"differs: {p}" for p in sorted(set(a) & set(b)) if a[p] != b[p]]
    return lines


def main(argv: list[str]) -> int:
    if len(argv) == 1:
        json.dump(manifest(Path(argv[0])), sys.stdout, indent=1, sort_keys=True)
        return 0
    if len(argv) != 2:
        print(__doc__)
        return 2
    a, b = (json.loads(Path(x).read_text()) if x.endswith(".json") else manifest(Path(x)) for x in argv)
    diff = differences(a, b)
    print("\n".join(diff) if diff else f"identical: {len(a)} files")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
