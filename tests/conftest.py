"""Shared fixtures: tiny random-init models built once per test session, offline."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random-init micro Llama with a BPE tokenizer and a ChatML chat template."""
    from lib.models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))
