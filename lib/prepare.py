"""Stage 00_models: make every model the active profile needs available offline under models/base/.

    python -m lib.prepare cpu

The cpu profile converts the SmolLM2 GGUF once to a plain HF directory; tiny builds its micro Llama;
paper records the Hub ids (downloaded on first use on a workstation with internet). A teacher served
by an OpenAI-compatible endpoint needs nothing here.
"""
from __future__ import annotations

import sys

from lib import config
from lib.models import prepare_model


def roles_to_prepare(cfg: dict) -> list[str]:
    """The model roles whose weights must be on disk for this profile."""
    roles = ["student", "embedder", "classifier_encoder"]
    if cfg["synthesize"]["jic"]["backend"] == "local":
        roles.append("teacher")
    return roles


def main(profile: str) -> None:
    cfg = config.load(profile)
    done: set[str] = set()
    for role in roles_to_prepare(cfg):
        spec = cfg["models"][role]
        if spec in done:
            continue
        out = config.model_dir(cfg, role)
        print(f"{role}: {spec} -> {out.relative_to(config.ROOT)}", flush=True)
        prepare_model(spec, out)
        done.add(spec)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else config.active_profile())
