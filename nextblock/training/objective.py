"""The training objective: one forward over [noisy copy | clean copy] with the
context-causal training mask (nextblock.masks), then

    L = L_MDM + lambda * L_AR        (lambda = 0.5 by default)

L_MDM: cross-entropy on the masked positions of the noisy copy, shifted like AR (the output at
position i-1 predicts token i). Block anchors (first token of each block) are never masked, so
every masked token's predictor lies in its own block. L_AR: next-token cross-entropy on the
clean copy, the plain causal LM the commit pass and AR mode rely on. With block size 1 every
token is an anchor: L_MDM is empty and the noisy half is skipped (plain AR training).

    batch = noise(x, block_size=4, mask_token_id=m, settings=ObjectiveSettings())
    out = objective(model, batch)
    out.loss.backward(); print(out.metrics)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import masks
from ..errors import ConfigError
from ..modeling import forward


@dataclass
class ObjectiveSettings:
    ar_weight: float = 0.5  # lambda
    mask_schedule: str = "block"  # t ~ U(0,1) drawn per "block" or per "sequence"
    inverse_t_weight: bool = False  # weight masked tokens by 1/t (not in the paper's loss)
    complementary: bool = False  # add a copy with the complementary mask (Fast-dLLM v2)
    min_t: float = 1e-3

    def __post_init__(self):
        if self.mask_schedule not in ("block", "sequence"):
            raise ConfigError(f"invalid mask_schedule={self.mask_schedule!r}: "
                              "expected 'block' or 'sequence'")
        if not self.ar_weight >= 0:
            raise ConfigError(f"invalid ar_weight={self.ar_weight!r}: must be >= 0")


@dataclass
class NoisyBatch:
    clean: torch.Tensor  # [B, L] token ids
    noisy: torch.Tensor  # [B, L] with masked positions replaced by the mask token
    masked: torch.Tensor  # [B, L] bool
    t: torch.Tensor  # [B, L] masking rate each token was drawn with
    lengths: torch.Tensor  # [B] real tokens per row (right padding)
    loss_mask: torch.Tensor  # [B, L] bool: tokens that are targets (SFT: the responses)
    block_size: int
    ar_rows: torch.Tensor  # [B] bool: rows whose clean half counts for L_AR


def noise(clean: torch.Tensor, block_size: int, mask_token_id: int,
          settings: ObjectiveSettings | None = None, lengths: torch.Tensor | None = None,
          loss_mask: torch.Tensor | None = None, generator: torch.Generator | None = None
          ) -> NoisyBatch:
    """Mask each non-anchor target token with probability t, t ~ U(min_t, 1) per block or
    per sequence."""
    s = settings or ObjectiveSettings()
    B, L = clean.shape
    if block_size < 1 or block_size > L:
        raise ConfigError(f"block size {block_size} does not fit sequences of length {L}")
    dev = clean.device
    lengths = torch.full((B,), L, device=dev) if lengths is None else lengths
    pos = torch.arange(L, device=dev)
    valid = pos[None, :] < lengths[:, None]
    loss_mask = valid if loss_mask is None else (loss_mask & valid)
    n_t = (L + block_size - 1) // block_size if s.mask_schedule == "block" else 1
    u = torch.rand(B, n_t, generator=generator).to(dev)
    t = s.min_t + (1 - s.min_t) * u
    t = t.repeat_interleave(block_size, dim=1)[:, :L] if n_t > 1 else t.expand(B, L)
    eligible = loss_mask & (pos % block_size != 0)[None, :]
    draw = torch.rand(B, L, generator=generator).to(dev)
    masked = eligible & (draw < t)
    ar_rows = torch.ones(B, dtype=torch.bool, device=dev)
    if s.complementary and block_size > 1:
        masked = torch.cat([masked, eligible & ~masked])
        clean, t, lengths, loss_mask = (torch.cat([x, x]) for x in (clean, t, lengths, loss_mask))
        ar_rows = torch.cat([ar_rows, torch.zeros_like(ar_rows)])
    noisy = torch.where(masked, torch.full_like(clean, mask_token_id), clean)
    return NoisyBatch(clean, noisy, masked, t, lengths, loss_mask, block_size, ar_rows)


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    mdm_loss: torch.Tensor
    ar_loss: torch.Tensor
    masked_accuracy: torch.Tensor
    n_masked: int

    @property
    def metrics(self) -> dict:
        return {"loss": self.loss.item(), "mdm_loss": float(self.mdm_loss),
                "ar_loss": float(self.ar_loss), "masked_acc": float(self.masked_accuracy),
                "n_masked": self.n_masked}


def training_logits(model, batch: NoisyBatch, checkpoint: bool = False):
    """(noisy-half logits or None, clean-half logits), each [B, L, V], in one forward."""
    B, L = batch.clean.shape
    pos = torch.arange(L, device=batch.clean.device).expand(B, L)
    full = bool((batch.lengths == L).all())
    if batch.block_size == 1:  # nothing is masked: only the clean, causal half matters
        mask = masks.decode_mask(pos < batch.lengths[:, None], 0, L, causal=True)
        return None, forward(model, batch.clean, pos, mask, checkpoint=checkpoint)
    mask = masks.training_mask(L, batch.block_size, None if full else batch.lengths, batch=B,
                               device=batch.clean.device)
    ids = torch.cat([batch.noisy, batch.clean], dim=1)
    logits = forward(model, ids, torch.cat([pos, pos], dim=1), mask, checkpoint=checkpoint)
    return logits[:, :L], logits[:, L:]


def objective(model, batch: NoisyBatch, settings: ObjectiveSettings | None = None,
              checkpoint: bool = False) -> ObjectiveOutput:
    s = settings or ObjectiveSettings()
    noisy_logits, clean_logits = training_logits(model, batch, checkpoint)
    target = batch.clean[:, 1:]

    ar_sel = batch.loss_mask[:, 1:] & batch.ar_rows[:, None]
    ar = F.cross_entropy(clean_logits[:, :-1][ar_sel].float(), target[ar_sel]) \
        if ar_sel.any() else clean_logits.sum() * 0.0

    sel = batch.masked[:, 1:]
    n_masked = int(sel.sum())
    if noisy_logits is None or n_masked == 0:
        zero = clean_logits.sum() * 0.0
        mdm, acc = zero, zero.detach()
    else:
        pred = noisy_logits[:, :-1][sel].float()
        ce = F.cross_entropy(pred, target[sel], reduction="none")
        if s.inverse_t_weight:
            ce = ce / batch.t[:, 1:][sel]
        mdm = ce.mean()
        acc = (pred.argmax(-1) == target[sel]).float().mean().detach()
    return ObjectiveOutput(mdm + s.ar_weight * ar, mdm.detach(), ar.detach(), acc, n_masked)
