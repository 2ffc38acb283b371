"""The CPU requirements and the GPU workstation's conda environment must pin the same versions."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GPU_EXTRAS = {"unsloth", "unsloth_zoo", "bitsandbytes"}


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"not an exact pin: {line!r}"
        pins[m.group(1).lower().replace("-", "_")] = m.group(2)
    return pins


def test_environment_yml_pins_match_requirements():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda = _pins(pip_section)
    assert {k: v for k, v in conda.items() if k not in GPU_EXTRAS} == req
    assert GPU_EXTRAS <= set(conda), "environment.yml lost its GPU extras"


def test_unsloth_never_in_cpu_requirements():
    # Unsloth drags a torchvision that breaks `import peft` on a CPU install.
    pins = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert not any(name.startswith("unsloth") for name in pins)


def test_torch_pinned_to_the_local_wheel():
    assert _pins((ROOT / "requirements.txt").read_text().splitlines())["torch"] == "2.13.0"
