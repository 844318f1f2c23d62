"""Export a training run as a model `nextblock.load` (and `transformers`) can read.

    nextblock export --model runs/a --out models/a            # merged HF directory
    nextblock export --model runs/a --out adapter --adapter   # LoRA adapter + mask row

A merged export is a plain Hugging Face directory (LoRA merged, the mask-token embedding row
written in) that `AutoModelForCausalLM.from_pretrained` loads as an ordinary causal LM, with
the block-diffusion settings in nextblock.json. An adapter export (the format of
nextblock.adapter) holds only the peft weights (LoRA and the mask token's row) and
nextblock.json, whose `base_model` names the model to apply them to.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import BlockConfig
from ..errors import ConfigError
from .checkpoint import latest_checkpoint, read_checkpoint
from .trainer import AdaptConfig, build_model


def find_checkpoint(run: str | Path) -> Path:
    run = Path(run)
    if (run / "state.json").exists():
        return run
    ckpt = latest_checkpoint(run) if run.exists() else None
    if ckpt is None:
        raise ConfigError(f"{run}: no training checkpoint found (expected a run directory "
                          "with checkpoints/latest, or a checkpoint directory)")
    return ckpt


def export(run: str | Path, out: str | Path, adapter: bool = False,
           dtype: torch.dtype = torch.float32, decoding: dict | None = None) -> Path:
    from ..loading import load, parse_rope_scaling

    ckpt = find_checkpoint(run)
    weights, _, state = read_checkpoint(ckpt)
    cfg = AdaptConfig(**state["config"])
    if adapter and not cfg.lora_r:
        raise ConfigError(f"{ckpt}: this run trained all weights; an adapter export needs a "
                          "LoRA run (export without --adapter instead)")
    lm = load(cfg.model or "default-base", dtype="float32")  # a run without one trained the base
    module = build_model(cfg, lm)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, t in weights.items():
            params[name].copy_(t)
    sizes = state["trained_block_sizes"]
    start = Path(cfg.init_adapter) if cfg.init_adapter else None
    if start is not None and (start / "nextblock.json").exists():
        # a continuation: the adapter it started from had been trained on its own sizes
        sizes = sorted(set(sizes) | set(BlockConfig.load(start).trained_block_sizes))
    block = BlockConfig(
        mask_token_id=lm.config.mask_token_id, mask_token=lm.config.mask_token,
        block_size=state["block_size"], trained_block_sizes=sizes,
        decoding=decoding or {"mode": "block", "threshold": 0.9},
        base_model=cfg.model or "default-base", rope_scaling=parse_rope_scaling(cfg.rope_scaling),
        attention=cfg.training_mask)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if adapter:
        peft_model = module.model
        peft_model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
        weights = out / "adapter_model.safetensors"
        save_file({k: v.to(dtype).contiguous() for k, v in load_file(weights).items()}, weights)
        meta = json.loads((out / "adapter_config.json").read_text())
        meta["base_model_name_or_path"] = block.base_model  # a spec, not this machine's path
        (out / "adapter_config.json").write_text(json.dumps(meta, indent=2) + "\n")
        (out / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    else:
        model = module.model
        if cfg.lora_r:  # LoRA and the mask token's row merged into the weights
            model = model.merge_and_unload()
        model.to(dtype).save_pretrained(out, safe_serialization=True)
        lm.tokenizer.save_pretrained(out)
    block.save(out)
    return out


def export_gguf(model: str | Path, out: str | Path, kind: str = "f16") -> Path:
    """A training run (merged first) or any model spec as one GGUF file (gguf_export)."""
    import tempfile

    from ..gguf_export import write_gguf
    from ..loading import load

    path = Path(model)
    is_run = (path / "state.json").exists() or (path / "checkpoints").exists()
    out = Path(out)
    if out.suffix != ".gguf":
        raise ConfigError(f"--out {out}: a GGUF file name ends in .gguf")
    if not is_run:
        return write_gguf(load(model, dtype="float32"), out, kind=kind)
    with tempfile.TemporaryDirectory() as tmp:
        merged = export(path, Path(tmp) / "merged")
        return write_gguf(load(merged, dtype="float32"), out, kind=kind)

