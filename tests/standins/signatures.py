"""The real keyword parameters of the CUDA-only APIs the training path calls, read from the pinned packages' source.

Unsloth cannot be installed on a CPU machine (it needs a GPU to import, and breaks peft), so `make setup` downloads
the wheel pinned in environment.yml (no install) to .venv/wheels/, and this module reads the functions' parameter
lists from it with `ast`. BitsAndBytesConfig lives in transformers, which is installed: `inspect` reads it.

Only explicitly named parameters count as accepted: these functions also take **kwargs, which swallow a misspelt
or renamed argument silently, and that is exactly the drift the GPU stand-in must catch.
"""
from __future__ import annotations

import ast
import inspect
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = Path(sys.prefix) / "wheels"  # .venv/wheels: `make setup` puts them there

# (file in the wheel, class or None, function)
UNSLOTH_FUNCTIONS = {
    "FastLanguageModel.from_pretrained": ("unsloth/models/loader.py", "FastLanguageModel", "from_pretrained"),
    "FastLanguageModel.get_peft_model": ("unsloth/models/llama.py", "FastLlamaModel", "get_peft_model"),
    "PatchDPOTrainer": ("unsloth/models/dpo.py", None, "PatchDPOTrainer"),
}


def pinned_version(package: str) -> str:
    """The version environment.yml pins for a GPU extra."""
    text = (ROOT / "environment.yml").read_text(encoding="utf-8")
    match = re.search(rf"^\s*-\s*{re.escape(package)}==([\w.]+)", text, re.MULTILINE)
    if not match:
        raise LookupError(f"environment.yml pins no {package}")
    return match.group(1)


def unsloth_wheel() -> Path:
    """The pinned unsloth wheel downloaded by `make setup`; a clear error when it is missing."""
    version = pinned_version("unsloth")
    wheel = WHEELS / f"unsloth-{version}-py3-none-any.whl"
    if not wheel.is_file():
        raise FileNotFoundError(f"{wheel} is missing: run `make setup` (it downloads the pinned unsloth wheel, "
                                "without installing it, for the GPU stand-in's signature checks)")
    return wheel


def _params(fn: ast.FunctionDef) -> set[str]:
    args = fn.args
    return {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}


def unsloth_parameters() -> dict[str, set[str]]:
    """{api name: its named parameters} from the pinned unsloth source."""
    out = {}
    with zipfile.ZipFile(unsloth_wheel()) as wheel:
        for name, (member, cls, func) in UNSLOTH_FUNCTIONS.items():
            tree = ast.parse(wheel.read(member).decode("utf-8"))
            scope = tree.body
            if cls is not None:
                classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
                if not classes:
                    raise LookupError(f"{member}: no class {cls} (unsloth moved it?)")
                scope = classes[0].body
            found = [n for n in scope if isinstance(n, ast.FunctionDef) and n.name == func]
            if not found:
                raise LookupError(f"{member}: no function {cls + '.' if cls else ''}{func}")
            out[name] = _params(found[-1])
    return out


def bitsandbytes_config_parameters(cls=None) -> set[str]:
    """The named parameters of transformers.BitsAndBytesConfig (installed; `cls` when it is temporarily wrapped)."""
    if cls is None:
        from transformers import BitsAndBytesConfig as cls

    return {n for n, p in inspect.signature(cls).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def check_call(api: str, kwargs: dict, accepted: set[str]) -> None:
    """TypeError naming the arguments of `api` that are not among its named parameters."""
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(f"{api} has no parameter(s) {unknown} in the pinned source (named: {sorted(accepted)})")


def unsloth_name_map() -> dict[str, tuple[str, str]]:
    """{Hub id (any case): (Unsloth's 16-bit mirror, its bnb-4bit copy)} from the pinned unsloth/models/mapper.py's
    __INT_TO_FLOAT_MAPPER, whose entries read `"<4-bit copy>": ("<16-bit mirror>", "<original id>", ...)`."""
    with zipfile.ZipFile(unsloth_wheel()) as wheel:
        tree = ast.parse(wheel.read("unsloth/models/mapper.py").decode("utf-8"))
    table = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "__INT_TO_FLOAT_MAPPER" for t in node.targets))
    out = {}
    for key, value in zip(table.keys, table.values):
        names = [e.value for e in getattr(value, "elts", [value]) if isinstance(e, ast.Constant)]
        if names and not names[0].startswith("unsloth/"):  # a 4-bit copy of a repo Unsloth does not mirror
            names.insert(0, names[0])
        for original in names[1:]:
            out[original.lower()] = (names[0], key.value)
    if not out:
        raise LookupError("unsloth/models/mapper.py: no __INT_TO_FLOAT_MAPPER entries (unsloth moved it?)")
    return out
