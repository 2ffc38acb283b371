"""Recording stand-in for unsloth (tests only, on PYTHONPATH in the paper run): checks how the pipeline calls it.

Every call's keyword arguments are checked against the named parameters of the pinned unsloth source
(tests/standins/signatures.py) and appended to $GPU_STANDIN_LOG; then the work is done with transformers + peft on
the CPU. Importing it after transformers, trl or peft fails, as the real patches would then be incomplete.
"""
import json
import os
import sys

from tests.standins import signatures

_late = [m for m in ("transformers", "trl", "peft") if m in sys.modules]
if _late:
    raise ImportError(f"unsloth imported after {_late}: its patches would be incomplete (lib.models.import_unsloth_first)")

_ACCEPTED = signatures.unsloth_parameters()


def _record(api: str, kwargs: dict) -> None:
    signatures.check_call(api, kwargs, _ACCEPTED[api])
    with open(os.environ["GPU_STANDIN_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"api": api, "kwargs": {k: repr(v) for k, v in sorted(kwargs.items())}}) + "\n")


class FastLanguageModel:
    @staticmethod
    def from_pretrained(**kwargs):
        _record("FastLanguageModel.from_pretrained", kwargs)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = kwargs["model_name"]
        return AutoModelForCausalLM.from_pretrained(name), AutoTokenizer.from_pretrained(name)

    @staticmethod
    def get_peft_model(model, **kwargs):
        _record("FastLanguageModel.get_peft_model", kwargs)
        from peft import LoraConfig, get_peft_model
        from transformers import set_seed

        lora = {k: kwargs[k] for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias",
                                         "init_lora_weights", "use_rslora", "modules_to_save") if k in kwargs}
        set_seed(kwargs.get("random_state", 3407))
        return get_peft_model(model, LoraConfig(**lora, task_type="CAUSAL_LM"))


def PatchDPOTrainer(**kwargs):
    _record("PatchDPOTrainer", kwargs)
