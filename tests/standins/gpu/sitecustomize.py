"""GPU stand-in for the paper run (tests only): makes lib.models take its CUDA-only branches on a CPU machine.

On PYTHONPATH, this runs at the start of every Python process of the run (dvc, papermill, each kernel). When
lib.models is imported it is patched so that: unsloth counts as available (the recording stand-in beside this file
is what imports), 4-bit loading counts as possible, the NF4 BitsAndBytesConfig arguments are checked against the
real class, and a quantised load is recorded and then done in full precision on the CPU. Nothing else changes.
"""
import importlib.abc
import importlib.machinery
import json
import os
import sys


def _log(api, kwargs):
    with open(os.environ["GPU_STANDIN_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"api": api, "kwargs": {k: repr(v) for k, v in sorted(kwargs.items())}}) + "\n")


def _patch(models):
    from tests.standins import signatures

    models.unsloth_available = lambda: True
    models.quantization_available = lambda: True
    real_nf4, real_load = models.nf4_kwargs, models._load_causal_lm

    def nf4_kwargs():
        import transformers

        real = transformers.BitsAndBytesConfig

        def checked(**kwargs):
            signatures.check_call("BitsAndBytesConfig", kwargs, signatures.bitsandbytes_config_parameters(real))
            _log("BitsAndBytesConfig", kwargs)
            return real(**kwargs)

        transformers.BitsAndBytesConfig = checked
        try:
            return real_nf4()
        finally:
            transformers.BitsAndBytesConfig = real

    def load_causal_lm(auto_class, name, **kwargs):
        if "quantization_config" in kwargs:
            _log("from_pretrained (4-bit)", {"name": name, "device_map": kwargs.pop("device_map", None),
                                             "load_in_4bit": kwargs.pop("quantization_config").load_in_4bit})
        return real_load(auto_class, name, **kwargs)

    models.nf4_kwargs, models._load_causal_lm = nf4_kwargs, load_causal_lm


class _Finder(importlib.abc.MetaPathFinder):
    """After `lib.models` (and `lib.train`) execute, patch them (see the module docstring)."""

    def find_spec(self, name, path, target=None):
        if name not in ("lib.models", "lib.train"):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        loader = spec.loader
        real_exec = loader.exec_module

        def exec_module(module):
            real_exec(module)
            if name == "lib.models":
                _patch(module)
            else:
                real_render = module.render_rows

                def render_rows(rows, tokenizer):
                    out = real_render(rows, tokenizer)
                    _log("render_rows", {"rows": len(out), "all_strings": all(
                        isinstance(v, str) for row in out for v in row.values())})
                    return out

                module.render_rows = render_rows

        loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())
