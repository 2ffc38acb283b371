"""Files of Hugging Face Hub datasets, named in params as `hf://datasets/<owner>/<name>/<path in the repo>`.

The paper profile reads its corpora from their Hub homes (allenai/soda, the PANDORA subset, PersonaChat) with the
same keys that the cpu profile points at the offline mirror, so a stage reads a local file either way:

    path = hub.dataset_file("hf://datasets/allenai/soda/train.parquet")   # downloaded once, then from the cache

`huggingface_hub.hf_hub_download` keeps the file in the Hugging Face cache (`HF_HOME`); with `HF_HUB_OFFLINE=1` it
answers from that cache only, which is how a workstation without internet (and the tests) runs a paper profile.
"""
from __future__ import annotations

import re
from pathlib import Path

PREFIX = "hf://datasets/"
MODEL_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name


def is_model_id(text: str) -> bool:
    """Whether a model reference is shaped like a Hub id ("owner/name") rather than a local path."""
    return bool(MODEL_ID.fullmatch(str(text)))


def is_hub_uri(value: str) -> bool:
    """Whether a params value names a Hub dataset file rather than a path in the data mirror."""
    return isinstance(value, str) and value.startswith(PREFIX)


def split_uri(uri: str) -> tuple[str, str]:
    """("owner/name", "path/in/repo") of an hf://datasets/ URI; ValueError naming the URI when it is malformed."""
    if not is_hub_uri(uri):
        raise ValueError(f"{uri!r} is not a Hub dataset file (expected {PREFIX}<owner>/<name>/<path>)")
    parts = uri[len(PREFIX):].split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{uri!r}: expected {PREFIX}<owner>/<name>/<path in the repo>")
    return f"{parts[0]}/{parts[1]}", parts[2]


def dataset_file(uri: str, revision: str | None = None) -> Path:
    """The local path of a Hub dataset file, downloading it into the Hugging Face cache on first use."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, filename = split_uri(uri)
    try:
        return Path(hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision))
    except LocalEntryNotFoundError as exc:
        raise FileNotFoundError(f"{uri}: not in the Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE "
                                f"set, or no network); download it on a connected machine with `huggingface-cli "
                                f"download --repo-type dataset {repo_id} {filename!r}`") from exc
