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
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("tiny", "cpu", "paper")
OPT_INT, OPT_STR, OPT_FLOAT = (int, type(None)), (str, type(None)), (float, int, type(None))
NUM = (float, int)
ANY_DICT = "any-dict"  # free-form: checked against the library signature it feeds (see check_kwargs)
PATH = "path"          # a str naming a file that must exist (relative to the repo root)
DATA_PATH = "data-path"  # same, relative to data.root


class ParamsError(ValueError):
    """A params file that cannot drive a stage: the message names the file and the key."""


SCHEMA: dict[str, Any] = {
    "data": {"root": str},
    "models": {"student": str, "teacher": str, "embedder": str, "classifier_encoder": str},
    "scrape": {"jic": {
        "source": str, "essays_path": DATA_PATH, "classifier_folds": list, "journal_folds": list,
        "max_authors": OPT_INT, "sentences_per_entry": int, "min_words": int, "max_entries_per_author": OPT_INT,
        "subreddit": str, "after": str, "before": str, "max_items": OPT_INT, "salt_env": str},
        "big5chat": {"soda_path": DATA_PATH, "max_scenarios": OPT_INT, "essays_path": DATA_PATH, "expert_folds": list,
                     "texts_per_expert": OPT_INT, "text_words": int}},
    "cluster": {"jic": {"method": str, "k_min": int, "k_max": int, "min_entries": int, "batch_size": int,
                        "max_seq_length": int, "seed": int}},
    "classifier": {"backend": str, "source": str, "test_folds": list, "max_per_fold": OPT_INT, "C": NUM, "threshold": NUM,
                   "batch_size": int, "max_seq_length": int, "learning_rate": NUM,
                   "per_device_train_batch_size": int, "num_train_epochs": NUM, "seed": int},
    "filter": {"jic": {"alpha": OPT_FLOAT, "beta": NUM, "alphas": list, "betas": list, "min_entries": int,
                       "n_pairs": int, "max_pairs_per_author": OPT_INT, "journal_words": int, "seed": int}},
    "synthesize": {"jic": {
        "backend": str, "base_url": OPT_STR, "api_key_env": str, "mode": str, "template": PATH,
        "system_prompt": PATH, "n_turns": int, "max_words": int, "temperature": NUM, "top_p": NUM,
        "max_new_tokens": int, "max_repairs": int, "batch_size": int, "max_concurrency": int,
        "max_retries": int, "seed": int}},
    "dexperts": {"template": PATH, "traits": list, "max_units_per_scenario": OPT_INT,
                 "expert": {"max_seq_length": int, "lora": ANY_DICT, "args": ANY_DICT},
                 "alpha": NUM, "antiexpert": bool, "join_after": int, "max_new_tokens": int, "temperature": NUM,
                 "top_p": NUM, "batch_size": int, "sweep_alphas": list, "sweep_scenarios": int, "seed": int},
    "sft": {"jic": {"test_fraction": NUM, "split_seed": int, "system_prompt": str, "max_seq_length": int,
                    "load_in_4bit": bool, "raft": {"top_k": int, "lambda_": NUM, "segment_words": int},
                    "lora": ANY_DICT, "args": ANY_DICT},
            "big5chat": {"test_fraction": NUM, "split_seed": int, "max_seq_length": int, "load_in_4bit": bool,
                         "lora": ANY_DICT, "args": ANY_DICT}},
    "dpo": {"big5chat": {"max_seq_length": int, "load_in_4bit": bool, "lora": ANY_DICT, "args": ANY_DICT}},
    "generate": {"jic": {"n_prefix_turns": int, "max_new_tokens": int, "temperature": NUM, "batch_size": int,
                         "max_dialogues": OPT_INT},
                 "big5chat": {"instruments": list, "traits": list, "demo_examples": int, "demo_words": int,
                              "loglik_batch_size": int,
                              "generation": {"instruments": list, "n_runs": int, "temperature": NUM, "top_p": NUM,
                                             "max_new_tokens": int, "batch_size": int},
                              "seed": int}},
    "eval": {"jic": {"bertscore": bool, "bertscore_layers": int},
             "big5chat": {"primary": str}},
}

CHOICES = {
    ("scrape", "jic", "source"): ("essays", "pullpush"),
    ("cluster", "jic", "method"): ("kmeans", "agglomerative"),
    ("classifier", "backend"): ("embedding_logreg", "finetune"),
    ("classifier", "source"): ("essays", "pandora"),
    ("synthesize", "jic", "backend"): ("local", "openai"),
    ("synthesize", "jic", "mode"): ("whole", "turn"),
    ("eval", "big5chat", "primary"): ("loglik", "generation"),
}


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
    """Validate one params file against SCHEMA and CHOICES (and that the files it names exist)."""
    cfg = _read_yaml(path)
    _validate(cfg, SCHEMA, path, ())
    for key_path, allowed in CHOICES.items():
        value = _get(cfg, key_path)
        if value not in allowed:
            raise ParamsError(f"{_rel(path)}: {'.'.join(key_path)} = {value!r}; expected one of {allowed}")
    if check_files:
        _check_files(cfg, SCHEMA, path, ())
    return cfg


def data_path(cfg: dict, rel: str) -> Path:
    """A path inside the data mirror (`data.root` is relative to the repo root)."""
    return (ROOT / cfg["data"]["root"] / rel).resolve()


def model_dir(cfg: dict, role: str) -> Path:
    """Where `prepare_models` puts the model for a role (student, teacher, embedder, ...)."""
    return ROOT / "models" / "base" / slug(cfg["models"][role])


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


def _validate(node: Any, schema: Any, path: Path, keys: tuple) -> None:
    where = f"{_rel(path)}: {'.'.join(keys)}"
    if isinstance(schema, dict):
        if not isinstance(node, dict):
            raise ParamsError(f"{where}: expected a mapping, got {type(node).__name__}")
        for key in node:
            if key not in schema:
                raise ParamsError(f"{_rel(path)}: unknown key {'.'.join(keys + (key,))}")
        for key, sub in schema.items():
            if key not in node:
                raise ParamsError(f"{_rel(path)}: missing key {'.'.join(keys + (key,))}")
            _validate(node[key], sub, path, keys + (key,))
        return
    if schema == ANY_DICT:
        if not isinstance(node, dict):
            raise ParamsError(f"{where}: expected a mapping, got {type(node).__name__}")
        return
    expected = str if schema in (PATH, DATA_PATH) else schema
    # bool is an int subclass in Python; a `true` where a number belongs is a typo, not a value
    if isinstance(node, bool) and expected is not bool and not (isinstance(expected, tuple) and bool in expected):
        raise ParamsError(f"{where} = {node!r}: expected {_type_name(expected)}")
    if not isinstance(node, expected):
        raise ParamsError(f"{where} = {node!r}: expected {_type_name(expected)}, got {type(node).__name__}")


def _check_files(node: Any, schema: Any, path: Path, keys: tuple, cfg: dict | None = None) -> None:
    cfg = cfg if cfg is not None else node
    if isinstance(schema, dict):
        for key, sub in schema.items():
            _check_files(node[key], sub, path, keys + (key,), cfg)
    elif schema in (PATH, DATA_PATH):
        target = ROOT / node if schema == PATH else data_path(cfg, node)
        if not target.exists():
            raise ParamsError(f"{_rel(path)}: {'.'.join(keys)} names a missing file: {target}")


def _get(cfg: dict, keys: tuple) -> Any:
    for key in keys:
        cfg = cfg[key]
    return cfg


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join("null" if x is type(None) else x.__name__ for x in t)
    return t.__name__


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)
