"""PersLLM's students behind one `vllm serve`: the personified base plus two LoRA adapters.

vLLM serves one base model with LoRA adapters on it. PersLLM's three models do not fit that shape as trained:
- the base is *personified*: the stage tokens are added and the embeddings resized (`personify.add_stage_tokens`),
  so the served base must be that model, written to disk with its tokenizer (the Hub model lacks the tokens);
- SFT is a LoRA on the personified base: served as is;
- DPO is a LoRA trained on the *merged* SFT model, i.e. the weights `W + s1·B1A1`, with its own `s2·B2A2` on top.

A LoRA's update is linear, so SFT-then-DPO is one LoRA of rank r1 + r2 on the personified base:
`A = [A1; A2]`, `B = [s1·B1, s2·B2]`, with `lora_alpha = r` so that its own scale is 1. `stack_adapters` writes that
adapter; it equals the merged route up to the rounding of the merge (bf16 on the GPU; equal in float32, which the
tests check). vLLM then holds `persllm-base`, `persllm-sft` and `persllm-dpo` in one process. Only LoRA factors are
served: whole embedding weights peft may save beside them must equal the personified base's (they are not trained
here), or the stacking stops.

    python -m lib.persllm.serve       # writes models/served/persllm/ for the active profile and prints the command

The stage (`11_generate_persllm` with `backend: vllm`) calls the same `prepare`, so the folder is rebuilt whenever
the adapters or the stage tokens change; it is a working folder (git- and DVC-ignored), ~16 GB for the 8B student.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

SERVED_BASE = "persllm-base"  # the name the personified base is served under (--served-model-name)
ADAPTER_NAMES = {"sft": "persllm-sft", "dpo": "persllm-dpo"}


def _scale(cfg: Mapping) -> float:
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    return alpha / r ** 0.5 if cfg.get("use_rslora") else alpha / r


def _check_plain_lora(cfg: Mapping, where: Path) -> None:
    """Only plain LoRA stacks linearly: no DoRA, no per-module ranks or scales, no extra trained modules."""
    bad = {k: cfg.get(k) for k in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "fan_in_fan_out",
                                   "trainable_token_indices")
           if cfg.get(k) not in (None, False, {}, [])}
    if cfg.get("peft_type", "LORA") != "LORA":
        bad["peft_type"] = cfg.get("peft_type")
    if cfg.get("bias", "none") != "none":
        bad["bias"] = cfg.get("bias")
    if bad:
        raise ValueError(f"{where}: cannot stack this adapter into one LoRA ({bad}); serve the merged model instead")


def _base_tensors(base_dir: Path) -> dict:
    """name -> (file, key) of every tensor in a saved model folder (sharded or not)."""
    from safetensors import safe_open

    where = {}
    for f in sorted(base_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            where.update({k: (f, k) for k in st.keys()})  # noqa: SIM118 (a safe_open handle is not iterable)
    return where


def _check_extra_weights(weights: Mapping, adapter: Path, base_dir: Path | None) -> None:
    """Whole weights an adapter carries beside its LoRA factors (peft saves the embeddings when it sees the
    vocabulary resized) must equal the base's: a LoRA server cannot take trained embedding rows."""
    import torch
    from safetensors import safe_open

    extra = [k for k in weights if ".lora_" not in k]
    if not extra:
        return
    if base_dir is None:
        raise ValueError(f"{adapter} carries whole weights {extra[:3]}: give the base folder to check them against")
    where = _base_tensors(base_dir)
    for k in extra:
        name = k.removeprefix("base_model.model.")
        if name == "lm_head.weight" and name not in where:  # a tied head is saved once, as the input embeddings
            name = "model.embed_tokens.weight"
        if name not in where:
            raise ValueError(f"{adapter}: {k} has no counterpart {name!r} in {base_dir}")
        f, key = where[name]
        with safe_open(str(f), "pt") as st:
            same = torch.equal(st.get_tensor(key).float(), weights[k].float())
        if not same:
            raise ValueError(f"{adapter}: {k} differs from the base's {name}: trained embedding rows cannot be "
                             "served as a LoRA adapter; serve the merged model instead")


def stack_adapters(adapters: Sequence[str | Path], out_dir: str | Path, base_dir: str | Path | None = None) -> dict:
    """Write to out_dir one LoRA adapter equal to the first adapter merged into the weights, the next trained on
    that, and so on (one adapter: itself, its scale folded into B). Every module any adapter adapts is in the
    result (the others' parts zero). Whole weights an adapter carries are checked against `base_dir` (the base the
    first adapter was trained on) and left out. Returns the written config."""
    import torch
    from safetensors.torch import load_file, save_file

    dirs, out_dir = [Path(a) for a in adapters], Path(out_dir)
    base_dir = Path(base_dir) if base_dir is not None else None
    if not dirs:
        raise ValueError("stack_adapters: no adapter given")
    cfgs, tensors = [], []
    for d in dirs:
        try:
            cfg = json.loads((d / "adapter_config.json").read_text())
            weights = load_file(str(d / "adapter_model.safetensors"))
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"{d} holds no readable adapter ({exc}): run its stage first") from None
        _check_plain_lora(cfg, d)
        _check_extra_weights(weights, d, base_dir)
        cfgs.append(cfg)
        tensors.append({k: v for k, v in weights.items() if ".lora_" in k})
    ranks = [int(c["r"]) for c in cfgs]
    modules = sorted({k.rsplit(".lora_", 1)[0] for w in tensors for k in w})
    stacked = {}
    for m in modules:
        parts_a, parts_b = [], []
        ref = next(w for w in tensors if f"{m}.lora_A.weight" in w)
        d_in, d_out = ref[f"{m}.lora_A.weight"].shape[1], ref[f"{m}.lora_B.weight"].shape[0]
        for w, cfg, r in zip(tensors, cfgs, ranks):
            a, b = w.get(f"{m}.lora_A.weight"), w.get(f"{m}.lora_B.weight")
            if (a is None) != (b is None):
                raise ValueError(f"{m}: the adapter has only one of lora_A / lora_B")
            if a is None:
                a, b = torch.zeros(r, d_in), torch.zeros(d_out, r)
            parts_a.append(a.float())
            parts_b.append(b.float() * _scale(cfg))
        stacked[f"{m}.lora_A.weight"] = torch.cat(parts_a, 0).contiguous()
        stacked[f"{m}.lora_B.weight"] = torch.cat(parts_b, 1).contiguous()
    targets = sorted(set().union(*(c["target_modules"] for c in cfgs)))
    cfg = {**cfgs[0], "r": sum(ranks), "lora_alpha": sum(ranks), "use_rslora": False, "target_modules": targets,
           "rank_pattern": {}, "alpha_pattern": {}, "lora_dropout": 0.0}
    if base_dir is not None:
        cfg["base_model_name_or_path"] = str(base_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(stacked, str(tmp / "adapter_model.safetensors"))
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return cfg


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def prepare(student: str | Path, stages: Sequence[Mapping], sft_adapter: str | Path, dpo_adapter: str | Path,
            out_dir: str | Path) -> dict:
    """The folder `vllm serve` reads: `base/` (the personified base and its tokenizer), `sft/` (the SFT adapter)
    and `dpo/` (SFT and DPO stacked). Rebuilt only when the student, the stage tokens or an adapter changed (a
    `prepared.json` written last records what it was built from). Returns {"base": dir, "adapters": {name: dir}}."""
    from lib.persllm import personify

    out_dir = Path(out_dir)
    sft_adapter, dpo_adapter = Path(sft_adapter), Path(dpo_adapter)
    for d in (sft_adapter, dpo_adapter):
        if not (d / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"{d} holds no adapter (adapter_model.safetensors): run its stage first")
    source = {"student": str(student), "stages": [dict(s) for s in stages],
              "sft": _digest(sft_adapter / "adapter_model.safetensors"),
              "dpo": _digest(dpo_adapter / "adapter_model.safetensors")}
    layout = {"base": out_dir / "base", "adapters": {ADAPTER_NAMES["sft"]: out_dir / "sft",
                                                     ADAPTER_NAMES["dpo"]: out_dir / "dpo"}}
    marker = out_dir / "prepared.json"
    if marker.is_file() and json.loads(marker.read_text()) == source:
        return layout
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    personify.save_personified_base(student, stages, layout["base"])
    stack_adapters([sft_adapter], out_dir / "sft", layout["base"])
    stack_adapters([sft_adapter, dpo_adapter], out_dir / "dpo", layout["base"])
    marker.write_text(json.dumps(source))  # last: its presence marks the folder complete
    return layout


def main() -> None:
    from lib import config
    from lib.models import model_path
    from lib.records import read_jsonl
    from lib.served import ServedStudent

    root = Path(__file__).resolve().parents[2]
    cfg = config.load(config.active_profile())
    p = cfg["generate"]["persllm"]
    stages = read_jsonl(root / "data" / "persllm" / "01_scrape" / "stages.jsonl")
    layout = prepare(model_path(cfg, "models.student"), stages,
                     root / "models" / "sft" / "persllm" / "adapter", root / "models" / "dpo" / "persllm" / "adapter",
                     root / p["served"]["folder"])
    served = ServedStudent(p["served"], str(layout["base"]), layout["adapters"], served_name=SERVED_BASE)
    print(f"prepared {root / p['served']['folder']}; start the server with:\n  {served.command()}")


if __name__ == "__main__":
    main()
