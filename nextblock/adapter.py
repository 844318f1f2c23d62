"""The adapter format: what `nextblock export --adapter` writes and `nextblock.load` applies.

    adapter_model.safetensors   peft: the LoRA weights and the mask token's embedding row
                                (peft's trainable tokens, `trainable_token_indices`)
    adapter_config.json         peft's config; base_model_name_or_path is a model spec
    nextblock.json              the block-diffusion settings (config.BlockConfig)

Adapters exported before the mask row trained through peft keep that row in a file of its
own (mask_embedding.safetensors); they still load. A core module: loading applies adapters
without importing the trainer.

    apply_adapter(lm, Path("nextblock/assets/default"))   # merges into lm.model in place
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import BlockConfig
from .errors import ConfigError

LEGACY_MASK_FILE = "mask_embedding.safetensors"  # adapters exported before peft's tokens
TOKEN_ROW = "trainable_tokens_delta"  # peft's name of the trainable-token rows


def embedding_name(model) -> str:
    """The input embedding module's own name (peft's trainable_token_indices key)."""
    embed = model.get_input_embeddings()
    return next(n for n, m in model.named_modules() if m is embed).rsplit(".", 1)[-1]


def legacy_mask_row(directory: Path) -> torch.Tensor | None:
    path = Path(directory) / LEGACY_MASK_FILE
    return load_file(path)["mask_embedding"] if path.exists() else None


def apply_adapter(lm, directory: Path) -> None:
    """Merge a LoRA adapter export into a loaded base NextBlockModel, in place."""
    from peft import PeftModel

    block = BlockConfig.load(directory)
    if block.mask_token_id != lm.config.mask_token_id:
        raise ConfigError(f"{directory}: adapter expects mask token id {block.mask_token_id}, "
                          f"the base model has {lm.config.mask_token_id}")
    with warnings.catch_warnings():  # peft's own deprecation notices are not the user's
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(lm.model, str(directory)).merge_and_unload()
    row = legacy_mask_row(directory)
    if row is not None:
        with torch.no_grad():
            weight = model.get_input_embeddings().weight
            weight[block.mask_token_id] = row.to(weight.dtype)
    lm.model, lm.config = model.eval(), block
