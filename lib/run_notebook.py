"""Run one stage's notebook through papermill: the `cmd` of every notebook stage in dvc.yaml.

    python -m lib.run_notebook notebooks/08_sft_jic.ipynb [--recipe lora]

The profile comes from the switch in params.yaml and is validated before a kernel starts. The notebook
gets `outputs="pipeline"`, so it writes where DVC expects its outputs (run by hand it writes under
scratch/). The executed copy goes to reports/notebooks/<notebook>[_<recipe>].ipynb, tracked by git so a
reader of a fresh clone sees every executed notebook; the source notebook is never executed in place.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lib import config


def output_path(notebook: Path, recipe: str | None = None) -> Path:
    """reports/notebooks/<notebook stem>[_<recipe>].ipynb"""
    name = "_".join(x for x in (notebook.stem, recipe) if x)
    return config.ROOT / "reports" / "notebooks" / f"{name}.ipynb"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("--recipe")
    args = ap.parse_args(argv)

    profile = config.active_profile()
    config.load(profile)  # fail before starting a kernel if the params are wrong
    parameters = {"profile": profile, "outputs": "pipeline"}
    if args.recipe:
        parameters["recipe"] = args.recipe
    out = output_path(args.notebook, args.recipe)
    out.parent.mkdir(parents=True, exist_ok=True)

    # The kernel imports lib/ from this checkout, whatever the caller's PYTHONPATH says.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(config.ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    config.set_hub_mode(profile)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One string-hash order for every kernel, so what libraries write from a set (peft's target_modules, a model
    # card's tags) reads the same in every run; our own code never lets set order reach a result.
    os.environ.setdefault("PYTHONHASHSEED", "0")
    # MKL's conditional numerical reproducibility: without it, a matrix product's summation order may depend on how
    # its operands happen to be aligned in memory, so two identical runs can train to weights that differ in the last
    # bits (seen once in CI: one of 13 SFT runs). STRICT pins the order; measured at no cost on this machine.
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

    import papermill as pm

    print(f"running {args.notebook} ({profile}) -> {out.relative_to(config.ROOT)}", flush=True)
    try:
        pm.execute_notebook(str(args.notebook), str(out), parameters=parameters, kernel_name="python3",
                            cwd=str(config.ROOT), progress_bar=False, log_output=True)
    finally:
        relative_paths(out)
    return 0


def relative_paths(executed: Path) -> None:
    """Write the checkout's absolute path out of an executed notebook (papermill's metadata, warnings, printed paths),
    so the git-tracked copy reads the same on every machine: "/home/me/repo/lib/x.py" becomes "lib/x.py"."""
    if executed.is_file():
        root = str(config.ROOT)
        text = executed.read_text(encoding="utf-8")
        executed.write_text(text.replace(root + "/", "").replace(root, "."), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
