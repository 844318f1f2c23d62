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

    def candidates(self, masked: torch.Tensor) -> torch.Tensor:
        """The masked positions of each row's current sub-block [B, T]."""
        T = masked.shape[1]
        first = torch.where(masked.any(dim=1), masked.int().argmax(dim=1), T)
        pos = torch.arange(T, device=masked.device)
        current = (pos // self.sub_block)[None, :] == (first // self.sub_block)[:, None]
        return masked & current

    def fills_all(self, greedy: bool) -> bool:
        """Whether `select` takes every candidate whatever the model says: a greedy token's
        probability is at least 1/V > 0, so a threshold <= 0 on "prob" passes them all."""
        return greedy and self.threshold <= 0 and self.confidence == "prob"

    def select(self, conf: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """conf, masked: [B, T] over the block positions; returns the positions to fill."""
        has_mask = masked.any(dim=1)
        candidates = self.candidates(masked)
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
