"""The training objective: one forward over [noisy copy | clean copy] with the
context-causal training mask (nextblock.masks; `training_mask="block_causal"` for the
ablation), then

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
from ..modeling import forward, lm_head


@dataclass
class ObjectiveSettings:
    ar_weight: float = 0.5  # lambda
    mask_schedule: str = "block"  # t ~ U(0,1) drawn per "block" or per "sequence"
    inverse_t_weight: bool = False  # weight masked tokens by 1/t (not in the paper's loss)
    complementary: bool = False  # add a copy with the complementary mask (Fast-dLLM v2)
    min_t: float = 1e-3
    # "dense": one [2L, 2L] mask; "chunked": query chunks over the keys each may see
    # (memory linear in L, masks.Chunked); "auto": chunked from `chunked_from` tokens on
    attention: str = "auto"
    attention_chunk: int = 512
    chunked_from: int = 2048
    # the LM head + cross-entropy run over this many loss positions at a time, recomputed in
    # the backward pass: the [positions, vocab] logits are never held whole (long sequences)
    loss_chunk: int = 1024
    # "context_causal" (the system's mask) or "block_causal" (the clean half also sees the
    # rest of its block: the SDAR / Fast-dLLM v2 ablation; needs ar_weight=0, see masks)
    training_mask: str = "context_causal"

    def __post_init__(self):
        if self.attention not in ("auto", "dense", "chunked"):
            raise ConfigError(f"invalid attention={self.attention!r}: expected 'auto', "
                              "'dense' or 'chunked'")
        for name in ("attention_chunk", "loss_chunk"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"invalid {name}={v!r}: must be an integer >= 1")
        if self.mask_schedule not in ("block", "sequence"):
            raise ConfigError(f"invalid mask_schedule={self.mask_schedule!r}: "
                              "expected 'block' or 'sequence'")
        if not self.ar_weight >= 0:
            raise ConfigError(f"invalid ar_weight={self.ar_weight!r}: must be >= 0")
        if self.training_mask not in ("context_causal", "block_causal"):
            raise ConfigError(f"invalid training_mask={self.training_mask!r}: expected "
                              "'context_causal' or 'block_causal'")
        if self.training_mask == "block_causal" and self.ar_weight:
            raise ConfigError("training_mask='block_causal' needs ar_weight=0: its clean half "
                              "sees each block whole, so next-token targets would leak")


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
    offsets: torch.Tensor | None = None  # [B] start of each row's block grid
    docs: torch.Tensor | None = None  # [B, L] document of each token (packed rows)

    @property
    def counts(self) -> tuple[int, int]:
        """(masked targets, AR targets): the token counts L_MDM and L_AR average over."""
        n_ar = (self.loss_mask[:, 1:] & self.ar_rows[:, None]).sum()
        return int(self.masked[:, 1:].sum()), int(n_ar)

    @property
    def positions(self) -> torch.Tensor:
        """RoPE position ids, the same in both halves; each document starts at 0."""
        B, L = self.clean.shape
        if self.docs is None:
            return torch.arange(L, device=self.clean.device).expand(B, L)
        return masks.document_positions(self.docs)


def noise(clean: torch.Tensor, block_size: int, mask_token_id: int,
          settings: ObjectiveSettings | None = None, lengths: torch.Tensor | None = None,
          loss_mask: torch.Tensor | None = None, generator=None,
          offsets: torch.Tensor | None = None, draw_len: int | None = None,
          docs: torch.Tensor | None = None) -> NoisyBatch:
    """Mask each non-anchor target token with probability t, t ~ U(min_t, 1) per block or
    per sequence. `offsets[b]`: where row b's block grid starts (its response, for SFT);
    `docs[b, i]`: token i's document in a packed row (each document has its own grid).
    `generator`: one for the batch, or a list with one per row; with a list each row draws
    `draw_len` (>= L) values, so its noise does not depend on the batch it is in."""
    s = settings or ObjectiveSettings()
    B, L = clean.shape
    if block_size < 1 or block_size > L:
        raise ConfigError(f"block size {block_size} does not fit sequences of length {L}")
    dev = clean.device
    lengths = torch.full((B,), L, device=dev) if lengths is None else lengths
    valid = torch.arange(L, device=dev)[None, :] < lengths[:, None]
    loss_mask = valid if loss_mask is None else (loss_mask & valid)
    pos = torch.arange(L, device=dev)[None, :] if docs is None else masks.document_positions(docs)
    rel = pos - (0 if offsets is None else offsets[:, None])  # position in the grid
    per_row = isinstance(generator, (list, tuple))
    n = max(L, draw_len or 0) if per_row else L
    # one t per block of the grid (with documents a row can hold up to n blocks)
    n_blocks = n if docs is not None else (n + block_size - 1) // block_size
    n_t = n_blocks + 1 if s.mask_schedule == "block" else 1

    def rand(k):
        if per_row:
            return torch.stack([torch.rand(k, generator=g) for g in generator]).to(dev)
        return torch.rand(B, k, generator=generator).to(dev)

    u = rand(n_t)
    t = s.min_t + (1 - s.min_t) * u
    eligible = loss_mask & (rel % block_size != 0)
    if n_t > 1:  # block number: 0 before the grid starts, then 1, 2, ... at each anchor
        blk = ((rel >= 0) & (rel % block_size == 0)).long().cumsum(dim=1)
        t = t.gather(1, blk.clamp(max=n_t - 1).expand(B, L))
    else:
        t = t.expand(B, L)
    draw = rand(n)[:, :L]
    masked = eligible & (draw < t)
    ar_rows = torch.ones(B, dtype=torch.bool, device=dev)
    if s.complementary and block_size > 1:
        masked = torch.cat([masked, eligible & ~masked])
        clean, t, lengths, loss_mask = (torch.cat([x, x]) for x in (clean, t, lengths, loss_mask))
        offsets, docs = (None if x is None else torch.cat([x, x]) for x in (offsets, docs))
        ar_rows = torch.cat([ar_rows, torch.zeros_like(ar_rows)])
    noisy = torch.where(masked, torch.full_like(clean, mask_token_id), clean)
    return NoisyBatch(clean, noisy, masked, t, lengths, loss_mask, block_size, ar_rows, offsets,
                      docs)


@dataclass
class ObjectiveOutput:
    """Sums and counts, so a trainer can normalise by the tokens of the whole global batch
    (several processes, accumulation); `loss` normalises by this batch's own counts."""

    mdm_sum: torch.Tensor
    n_masked: int
    ar_sum: torch.Tensor
    n_ar: int
    n_correct: int
    ar_weight: float = 0.5
    inverse_t: bool = False

    def total(self, n_masked: int | None = None, n_ar: int | None = None) -> torch.Tensor:
        nm = max(1, self.n_masked if n_masked is None else n_masked)
        na = max(1, self.n_ar if n_ar is None else n_ar)
        return self.mdm_sum / nm + self.ar_weight * self.ar_sum / na

    @property
    def loss(self) -> torch.Tensor:
        return self.total()

    @property
    def mdm_loss(self) -> torch.Tensor:
        return self.mdm_sum.detach() / max(1, self.n_masked)

    @property
    def ar_loss(self) -> torch.Tensor:
        return self.ar_sum.detach() / max(1, self.n_ar)

    @property
    def masked_accuracy(self) -> float:
        return self.n_correct / max(1, self.n_masked)

    @property
    def metrics(self) -> dict:
        return {"loss": self.loss.item(), "mdm_loss": self.mdm_loss.item(),
                "ar_loss": self.ar_loss.item(), "masked_acc": self.masked_accuracy,
                "n_masked": self.n_masked}


def forward_mask(batch: NoisyBatch, attention: str = "auto", chunk: int = 512,
                 chunked_from: int = 2048, block_causal: bool = False):
    """The attention mask of the training forward: dense, or masks.Chunked for long rows.
    With block size 1 the layout is the clean half alone."""
    B, L = batch.clean.shape
    full = bool((batch.lengths == L).all())
    kw = dict(lengths=None if full else batch.lengths, offsets=batch.offsets, docs=batch.docs,
              block_causal=block_causal)
    clean_only = batch.block_size == 1
    if attention == "chunked" or (attention == "auto" and L >= chunked_from):
        return masks.training_chunks(L, batch.block_size, batch=B, device=batch.clean.device,
                                     chunk=chunk, clean_only=clean_only, **kw)
    mod = masks.training_mask_mod(L, batch.block_size, **kw)
    idx = torch.arange(L, device=batch.clean.device)
    if clean_only:
        idx = idx + L
    else:
        idx = torch.cat([idx, idx + L])
    return masks.dense_at(mod, B, idx, idx)


def training_hidden(model, batch: NoisyBatch, checkpoint: bool = False,
                    settings: ObjectiveSettings | None = None):
    """(noisy-half or None, clean-half) final hidden states [B, L, H], in one forward."""
    s = settings or ObjectiveSettings()
    L = batch.clean.shape[1]
    mask = forward_mask(batch, s.attention, s.attention_chunk, s.chunked_from,
                        s.training_mask == "block_causal")
    pos = batch.positions
    if batch.block_size == 1:  # nothing is masked: only the clean, causal half matters
        return None, forward(model, batch.clean, pos, mask, checkpoint=checkpoint, hidden=True)
    ids = torch.cat([batch.noisy, batch.clean], dim=1)
    h = forward(model, ids, torch.cat([pos, pos], dim=1), mask, checkpoint=checkpoint,
                hidden=True)
    return h[:, :L], h[:, L:]


def training_logits(model, batch: NoisyBatch, checkpoint: bool = False,
                    settings: ObjectiveSettings | None = None):
    """(noisy-half logits or None, clean-half logits), each [B, L, V]."""
    noisy, clean = training_hidden(model, batch, checkpoint, settings)
    head = lm_head(model)
    return (None if noisy is None else head(noisy)), head(clean)


def head_loss(head, h: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
              chunk: int = 1024, count_hits: bool = False) -> tuple[torch.Tensor, int]:
    """Sum of (weighted) cross-entropy of head(h) [N, V] against target [N], and (if asked)
    how many argmaxes hit, `chunk` rows at a time. Under autograd each chunk is checkpointed:
    only h is kept and the chunk's logits are recomputed in the backward pass, so memory holds
    one chunk's [chunk, V] logits instead of all N (the vocabulary dwarfs the hidden size)."""
    from torch.utils.checkpoint import checkpoint

    def part(hc, tc, wc):
        logits = head(hc).float()
        ce = F.cross_entropy(logits, tc, reduction="none")
        hits = (logits.detach().argmax(-1) == tc).sum() if count_hits else tc.new_zeros(())
        return (ce if wc is None else ce * wc).sum(), hits

    total, hits = h.sum() * 0.0, torch.zeros((), dtype=torch.long, device=h.device)
    for i in range(0, h.shape[0], chunk):
        args = (h[i:i + chunk], target[i:i + chunk],
                None if weight is None else weight[i:i + chunk])
        if torch.is_grad_enabled() and h.requires_grad and h.shape[0] > chunk:
            ce, n = checkpoint(part, *args, use_reentrant=False)
        else:
            ce, n = part(*args)
        total, hits = total + ce, hits + n
    return total, int(hits) if count_hits else 0  # one device sync


def objective(model, batch: NoisyBatch, settings: ObjectiveSettings | None = None,
              checkpoint: bool = False) -> ObjectiveOutput:
    s = settings or ObjectiveSettings()
    noisy, clean = training_hidden(model, batch, checkpoint, s)
    head = lm_head(model)  # applied only where a loss is taken: the vocabulary is large
    target = batch.clean[:, 1:]

    ar_sel = batch.loss_mask[:, 1:] & batch.ar_rows[:, None]
    ar_sum, _ = head_loss(head, clean[:, :-1][ar_sel], target[ar_sel], chunk=s.loss_chunk)
    sel = batch.masked[:, 1:]
    n_masked, n_ar = batch.counts  # the counts a trainer normalises a whole step by
    if noisy is None or n_masked == 0:
        mdm_sum, n_correct = clean.sum() * 0.0, 0
    else:
        weight = 1.0 / batch.t[:, 1:][sel] if s.inverse_t_weight else None
        mdm_sum, n_correct = head_loss(head, noisy[:, :-1][sel], target[sel], weight,
                                       chunk=s.loss_chunk, count_hits=True)
    return ObjectiveOutput(mdm_sum, n_masked, ar_sum, n_ar, n_correct,
                           s.ar_weight, s.inverse_t_weight)
