"""Shared by the benchmark scripts: print a result and write it as JSON under benchmarks/results/."""
from __future__ import annotations

import json
from pathlib import Path


def save_result(result: dict, out: str | Path) -> None:
    """Print `result` and write it to `out` (parents created), pretty JSON with a final newline."""
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
