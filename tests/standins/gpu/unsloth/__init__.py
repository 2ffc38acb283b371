"""Recording stand-in for unsloth (tests only, on PYTHONPATH in the paper run): checks how the pipeline calls it and
reproduces the side effects of the pinned release (unsloth==2026.10.9) that change what a run computes.

Every call's keyword arguments are checked against the named parameters of the pinned unsloth source
(tests/standins/signatures.py) and appended to $GPU_STANDIN_LOG; then the work is done with transformers + peft on
the CPU. Importing it after transformers, trl or peft fails, as the real patches would then be incomplete.

Side effects, each as the pinned source has it:
- `FastLanguageModel.from_pretrained` swaps a Hub id for Unsloth's own mirror unless `use_exact_model_name=True`
  (unsloth/models/loader.py; the table is the wheel's unsloth/models/mapper.py): meta-llama/Meta-Llama-3-8B-Instruct
  becomes unsloth/llama-3-8b-Instruct, or unsloth/llama-3-8b-Instruct-bnb-4bit with `load_in_4bit`. Offline, with
  only the named repo in the cache, that load fails as it would on a workstation.
- Loading a model replaces `peft.PeftModelForCausalLM.forward` for the whole process (FastLlamaModel.pre_patch:
  `PeftModelForCausalLM.forward = PeftModel_fast_forward`). The replacement calls the base model straight away and
  never enters peft's adapter-name hooks, so a mixed batch's `adapter_names` are dropped without a word (Unsloth's
  CausalLM_fast_forward takes **kwargs and never reads them; here they are dropped before the stock Llama forward).
- `FastLanguageModel.get_peft_model` turns gradient checkpointing on unless `use_gradient_checkpointing` is False
  (its default is "unsloth"; unsloth_zoo.training_utils.prepare_model_for_training).
"""
import json
import os
import sys

from tests.standins import signatures

_late = [m for m in ("transformers", "trl", "peft") if m in sys.modules]
if _late:
    raise ImportError(f"unsloth imported after {_late}: its patches would be incomplete (lib.models.import_unsloth_first)")

_ACCEPTED = signatures.unsloth_parameters()
_MIRRORS = signatures.unsloth_name_map()


def _record(api: str, kwargs: dict) -> None:
    signatures.check_call(api, kwargs, _ACCEPTED[api])
    with open(os.environ["GPU_STANDIN_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"api": api, "kwargs": {k: repr(v) for k, v in sorted(kwargs.items())}}) + "\n")


def _mapped_name(name: str, load_in_4bit: bool) -> str:
    """The repo Unsloth loads for `name` when use_exact_model_name is False."""
    mirrors = _MIRRORS.get(name.lower())
    if mirrors is None:
        return name
    return mirrors[1] if load_in_4bit else mirrors[0]


def PeftModel_fast_forward(self, input_ids=None, causal_mask=None, attention_mask=None, inputs_embeds=None,
                           labels=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                           task_ids=None, num_logits_to_keep=0, logits_to_keep=0, **kwargs):
    """unsloth/models/llama.py's replacement of PeftModelForCausalLM.forward: straight to the base model."""
    kwargs.pop("adapter_names", None)  # never routed to the LoRA layers (see the module docstring)
    return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                           labels=labels, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, return_dict=return_dict,
                           logits_to_keep=logits_to_keep, **kwargs)


def _pre_patch() -> None:
    import peft

    peft.PeftModelForCausalLM.forward = PeftModel_fast_forward
    peft.peft_model.PeftModelForCausalLM.forward = PeftModel_fast_forward


class FastLanguageModel:
    @staticmethod
    def from_pretrained(**kwargs):
        _record("FastLanguageModel.from_pretrained", kwargs)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = kwargs["model_name"]
        if not kwargs.get("use_exact_model_name", False):
            name = _mapped_name(name, bool(kwargs.get("load_in_4bit", True)))
        _pre_patch()
        return AutoModelForCausalLM.from_pretrained(name), AutoTokenizer.from_pretrained(name)

    @staticmethod
    def get_peft_model(model, **kwargs):
        _record("FastLanguageModel.get_peft_model", kwargs)
        from peft import LoraConfig, get_peft_model
        from transformers import set_seed

        lora = {k: kwargs[k] for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias",
                                         "init_lora_weights", "use_rslora", "modules_to_save") if k in kwargs}
        if kwargs.get("use_gradient_checkpointing", "unsloth") in (True, "unsloth"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            model.enable_input_require_grads()
        set_seed(kwargs.get("random_state", 3407))
        return get_peft_model(model, LoraConfig(**lora, task_type="CAUSAL_LM"))


def PatchDPOTrainer(**kwargs):
    _record("PatchDPOTrainer", kwargs)
