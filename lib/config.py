"""Profiles and parameters: load `params/<profile>.yaml`, validate it, and hand a stage its section.

The one switch is `profile:` in `params.yaml`. Every notebook's `parameters` cell names the profile
(papermill passes the switch's value) and calls `load(profile)` before any work, so a malformed
file, an unknown key, a wrong type or a missing input file stops the stage at once with a message
that names the file and the key.

    cfg = config.load("cpu")
    p = cfg["cluster"]["jic"]
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lib import hub

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("tiny", "cpu", "paper")
SCHEMA_FILE = ROOT / "params" / "schema.yaml"  # the shape of a params file; its leaf syntax is explained there
TYPES: dict[str, tuple] = {"str": (str,), "int": (int,), "num": (float, int), "bool": (bool,), "list": (list,),
                           "dict": (dict,), "path": (str,), "data-path": (str,), "model": (str,), "teacher": (str,)}
ROLES = ("model", "teacher")  # leaf types that name a model: the list of models and of teacher stages come from them


class ParamsError(ValueError):
    """A params file that cannot drive a stage: the message names the file and the key."""


@dataclass(frozen=True)
class Leaf:
    """One leaf of params/schema.yaml: the accepted types, the allowed strings (a choice) or a file to check."""
    types: tuple
    choices: tuple[str, ...] = ()
    file: str | None = None  # "path" (relative to the repo root) or "data-path" (relative to data.root)
    role: str | None = None  # "model" (a spec 00_models prepares) or "teacher" (a teacher stage's model)

    @classmethod
    def parse(cls, spec: Any, where: str) -> Leaf:
        if not isinstance(spec, str) or not spec.strip():
            raise ParamsError(f"{_rel(SCHEMA_FILE)}: {where}: a leaf must be a type name, got {spec!r}")
        name, nullable = spec.strip(), False
        if name.endswith(" or null"):
            name, nullable = name[: -len(" or null")].strip(), True
        if "|" in name:
            return cls(types=(str,) + ((type(None),) if nullable else ()), choices=tuple(name.split("|")))
        if name not in TYPES:
            raise ParamsError(f"{_rel(SCHEMA_FILE)}: {where}: unknown type {name!r}; expected one of {sorted(TYPES)}, "
                              "'a|b' or '<type> or null'")
        return cls(types=TYPES[name] + ((type(None),) if nullable else ()),
                   file=name if name in ("path", "data-path") else None, role=name if name in ROLES else None)


def schema() -> dict:
    """params/schema.yaml with every leaf parsed into a Leaf."""
    def parse(node: Any, keys: tuple) -> Any:
        if isinstance(node, dict):
            return {key: parse(sub, keys + (key,)) for key, sub in node.items()}
        return Leaf.parse(node, ".".join(keys))

    return parse(_read_yaml(SCHEMA_FILE), ())


def profile_path(profile: str) -> Path:
    """The params file of a profile."""
    if profile not in PROFILES:
        raise ParamsError(f"params.yaml: profile {profile!r} is not one of {', '.join(PROFILES)}")
    return ROOT / "params" / f"{profile}.yaml"


def active_profile() -> str:
    """The profile selected by the switch in params.yaml."""
    raw = _read_yaml(ROOT / "params.yaml")
    if "profile" not in raw:
        raise ParamsError("params.yaml: missing key 'profile'")
    return raw["profile"]


def load(profile: str | None = None, check_files: bool = True) -> dict:
    """Read and validate a profile's params; raise ParamsError naming file and key on any problem."""
    profile = profile or active_profile()
    cfg = load_file(profile_path(profile), check_files)
    cfg["_profile"] = profile
    return cfg


def load_file(path: Path, check_files: bool = True) -> dict:
    """Validate one params file against params/schema.yaml (and that the files it names exist)."""
    cfg = _read_yaml(path)
    shape = schema()
    _validate(cfg, shape, path, ())
    if check_files:
        _check_files(cfg, shape, path, ())
    return cfg


OUTPUTS = ("pipeline", "scratch")
SCRATCH = ROOT / "scratch"  # git- and DVC-ignored
_output_root = ROOT


def output_root(outputs: str) -> Path:
    """Where a notebook writes, and where lib.report puts metrics, figures and tables from now on.

    "pipeline" (what lib.run_notebook passes under `dvc repro`): the repository root, where DVC expects the stage's
    outputs. "scratch" (a notebook's default, so a run by hand in JupyterLab): scratch/ mirrors the same layout,
    and nothing DVC tracks is overwritten or invalidated. Inputs are read from the pipeline's outputs either way.
    """
    global _output_root
    if outputs not in OUTPUTS:
        raise ParamsError(f"notebook parameter outputs = {outputs!r}; expected one of {OUTPUTS}")
    _output_root = ROOT if outputs == "pipeline" else SCRATCH
    if outputs == "scratch":
        print(f"run by hand: outputs go under {_rel(SCRATCH)}/ (dvc repro writes the pipeline's own)")
    return _output_root


def setup(profile: str | None, outputs: str) -> tuple[str, Path]:
    """A notebook's first call, after its imports: (profile, output root). `profile` None (run by hand) takes the
    switch in params.yaml; `outputs` is the notebook parameter that output_root explains.

    The notebook imports lib/ because lib.run_notebook puts this checkout first on the kernel's PYTHONPATH under
    `dvc repro`, and `make setup` puts it on the environment's path for JupyterLab (`make lab`)."""
    return profile or active_profile(), output_root(outputs)


def current_output_root() -> Path:
    """The root set by the last `output_root` call (the repository root before any)."""
    return _output_root


def data_path(cfg: dict, rel: str) -> Path:
    """A local file for a data-path value: inside the data mirror (`data.root` is relative to the repo root), or, for
    `hf://datasets/<owner>/<name>/<file>` (the paper profile), the file from the Hugging Face cache (lib.hub)."""
    if hub.is_hub_uri(rel):
        return hub.dataset_file(rel)
    return (ROOT / cfg["data"]["root"] / rel).resolve()


def spec_dir(spec: str) -> Path:
    """Where 00_models puts the model for a spec (lib.models.prepare_model): models/base/<slug>."""
    return ROOT / "models" / "base" / slug(spec)


def get(cfg: dict, dotted: str) -> Any:
    """The value at a dotted key: get(cfg, "label.pchat.model")."""
    node = cfg
    for key in dotted.split("."):
        node = node[key]
    return node


def model_leaves() -> dict[str, str]:
    """{dotted key: role} for every schema leaf that names a model, in the schema's order."""
    found: dict[str, str] = {}

    def walk(node: Any, keys: tuple) -> None:
        if isinstance(node, dict):
            for key, sub in node.items():
                walk(sub, keys + (key,))
        elif node.role:
            found[".".join(keys)] = node.role

    walk(schema(), ())
    return found


def teacher_sections() -> tuple[tuple[str, str], ...]:
    """(section, paper) of every teacher stage: the params sections whose schema holds a `teacher` leaf."""
    return tuple(tuple(key.split(".")[:2]) for key, role in model_leaves().items() if role == "teacher")


def model_keys() -> list[str]:
    """The params keys that decide what 00_models prepares (dvc.yaml lists exactly these for it): every model leaf,
    each teacher stage's backend, and the switch that turns JIC's BERTScore on."""
    keys = []
    for key, role in model_leaves().items():
        if role == "teacher":
            keys.append(key.rsplit(".", 1)[0] + ".backend")
        if key == BERTSCORE_MODEL:
            keys.append(BERTSCORE_SWITCH)
        keys.append(key)
    return keys


BERTSCORE_MODEL, BERTSCORE_SWITCH = "eval.jic.bertscore_model", "eval.jic.bertscore"


def model_specs(cfg: dict) -> dict[str, str]:
    """Every model the profile names that 00_models must prepare, as {params key: spec}, read off the schema's
    `model` and `teacher` leaves.

    A teacher behind an endpoint is only a name there, so only local teachers count (`backend: local`). A model key
    set to null names nothing. JIC's BERTScore encoder counts where BERTScore is on; null (tiny, cpu) means
    `models.embedder`. PersLLM's retrieval and dedup encoder always counts (paper: sentence-transformers/gtr-t5-base;
    tiny and cpu: package:minilm, offline)."""
    specs = {}
    for key, role in model_leaves().items():
        spec = get(cfg, key)
        if spec is None:
            continue
        if role == "teacher" and get(cfg, key.rsplit(".", 1)[0] + ".backend") != "local":
            continue
        if key == BERTSCORE_MODEL and not get(cfg, BERTSCORE_SWITCH):
            continue
        specs[key] = spec
    return specs


def slug(spec: str) -> str:
    """A directory name for a model spec: 'gguf:smollm2' -> 'gguf-smollm2'."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in spec).strip("-")


def read_text(rel: str) -> str:
    """A prompt template or other text file named in params (relative to the repo root)."""
    return (ROOT / rel).read_text(encoding="utf-8")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of params, so resumable outputs notice when the params behind them changed."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_kwargs(kwargs: dict, target: Any, where: str) -> None:
    """Raise ParamsError if `kwargs` holds a key that `target` (a class or function) does not accept."""
    import inspect

    accepted = set(inspect.signature(target).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown} for {target.__name__}")


OFFLINE_PROFILES = ("tiny", "cpu")


def set_hub_mode(profile: str) -> None:
    """Keep the offline profiles off the Hugging Face Hub (HF_HUB_OFFLINE=1 unless the caller set it); leave the
    paper profile's environment as the user set it, so it downloads unless HF_HUB_OFFLINE is set. Call it before
    huggingface_hub is imported: the library reads the variable once, at import."""
    if profile in OFFLINE_PROFILES:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def secret_env(name: str) -> bool:
    """Whether an API key environment variable is set (its value is never returned or printed)."""
    return bool(os.environ.get(name))


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ParamsError(f"{_rel(path)}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ParamsError(f"{_rel(path)}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ParamsError(f"{_rel(path)}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _validate(node: Any, shape: dict | Leaf, path: Path, keys: tuple) -> None:
    where = f"{_rel(path)}: {'.'.join(keys)}"
    if isinstance(shape, dict):
        if not isinstance(node, dict):
            raise ParamsError(f"{where}: expected a mapping, got {type(node).__name__}")
        for key in node:
            if key not in shape:
                raise ParamsError(f"{_rel(path)}: unknown key {'.'.join(keys + (key,))}")
        for key, sub in shape.items():
            if key not in node:
                raise ParamsError(f"{_rel(path)}: missing key {'.'.join(keys + (key,))}")
            _validate(node[key], sub, path, keys + (key,))
        return
    if shape.types == (dict,) and not isinstance(node, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(node).__name__}")
    # bool is an int subclass in Python; a `true` where a number belongs is a typo, not a value
    if isinstance(node, bool) and bool not in shape.types:
        raise ParamsError(f"{where} = {node!r}: expected {_type_name(shape.types)}")
    if not isinstance(node, shape.types):
        raise ParamsError(f"{where} = {node!r}: expected {_type_name(shape.types)}, got {type(node).__name__}")
    if shape.choices and node is not None and node not in shape.choices:
        raise ParamsError(f"{where} = {node!r}; expected one of {shape.choices}")


def _check_files(node: Any, shape: dict | Leaf, path: Path, keys: tuple, cfg: dict | None = None) -> None:
    cfg = cfg if cfg is not None else node
    if isinstance(shape, dict):
        for key, sub in shape.items():
            _check_files(node[key], sub, path, keys + (key,), cfg)
    elif shape.file == "data-path" and hub.is_hub_uri(node):
        try:  # fetched by the stage that reads it (it may be large); only its form is checked here
            hub.split_uri(node)
        except ValueError as err:
            raise ParamsError(f"{_rel(path)}: {'.'.join(keys)}: {err}") from None
    elif shape.file and node is not None:
        target = ROOT / node if shape.file == "path" else data_path(cfg, node)
        if not target.exists():
            raise ParamsError(f"{_rel(path)}: {'.'.join(keys)} names a missing file: {target}")


def _type_name(types: tuple) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)
