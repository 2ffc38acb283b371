"""Stage 00_models: make every model the active profile names available under models/base/.

    python -m lib.prepare cpu

The cpu profile converts the SmolLM2 GGUF once to a plain HF directory; tiny builds its micro Llama; a Hub id
(the paper profile) is checked and recorded, and downloaded into the Hugging Face cache on first use. The models
come from `lib.config.model_specs`: the `models:` roles, each local teacher stage's model, PersonalityChat's
seq2seq student, the MCN sentence encoder and JIC's BERTScore encoder where the profile names one (tiny and cpu
score with `models.embedder`). A teacher behind an endpoint needs nothing here.
"""
from __future__ import annotations

import sys

from lib import config
from lib.models import prepare_model


def main(profile: str) -> None:
    config.set_hub_mode(profile)
    cfg = config.load(profile)
    done: set[str] = set()
    for key, spec in config.model_specs(cfg).items():
        if spec in done:
            continue
        out = config.spec_dir(spec)
        print(f"{key}: {spec} -> {out.relative_to(config.ROOT)}", flush=True)
        prepare_model(spec, out)
        done.add(spec)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else config.active_profile())
