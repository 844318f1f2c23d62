"""What to unmask at each denoising step: small policy objects plugged into the loop.

AR decoding is the block policy with block size 1: every block is just its anchor, so
there is never anything to denoise and each step is one causal commit (exact AR).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DecodeSettings


@dataclass
class BlockPolicy:
    """Threshold unmasking inside sub-blocks decoded left to right.

    Each step, for every row that still has masks: inside the row's current sub-block (the
    one holding its first masked position) unmask the most confident masked position, plus
    every masked position whose confidence exceeds `threshold`. Rows without masks transfer
    nothing (the reference loop's batch defect forces a transfer there).
    """

    block_size: int
    sub_block: int
    threshold: float
    confidence: str = "prob"

    def select(self, conf: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """conf, masked: [B, T] over the block positions; returns the positions to fill."""
        B, T = masked.shape
        has_mask = masked.any(dim=1)
        first = torch.where(has_mask, masked.int().argmax(dim=1), T)
        pos = torch.arange(T, device=masked.device)
        current = (pos // self.sub_block)[None, :] == (first // self.sub_block)[:, None]
        candidates = masked & current
        conf = conf.masked_fill(~candidates, -torch.inf)
        transfer = candidates & (conf > self.threshold)
        best = conf.argmax(dim=1)
        rows = has_mask.nonzero().squeeze(1)
        transfer[rows, best[rows]] = True
        return transfer


def policy_for(settings: DecodeSettings) -> BlockPolicy:
    # The anchor occupies block position 0, so sub-block boundaries are counted from it.
    return BlockPolicy(block_size=settings.effective_block_size,
                       sub_block=settings.effective_sub_block,
                       threshold=settings.threshold, confidence=settings.confidence)
