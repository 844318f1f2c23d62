"""The rows of a decoding batch over one static KV cache (used by `decoding.loop`).

    rows = Rows(model, prompts, capacity, mask_token_id)   # left-padded, nothing stored yet
    logits = rows.prefill(ids, chunk=2048)                  # store the prompts, chunked
    logits = rows.forward(block, rows.mask(T, causal=False))  # peek: run without storing
    logits = rows.forward(block, rows.mask(T, causal=True), store=T)  # commit: store T columns

Rows are left-padded so that they move in lockstep; each cache column records every row's
token and whether it is a real key (padding and rejected drafts are not), so one attention
mask serves the whole batch. Rows leave (`keep_rows`, dropping the padding columns no
remaining row needs) and join (`merge`, right-aligned) between blocks.
"""

from __future__ import annotations

import torch

from .. import masks
from ..cache import KVCache
from ..modeling import forward


class Rows:
    """The batch state: KV cache plus, per cache column, each row's token and whether it is a
    real key (False for left padding and for drafts verified mode rejected); `pos` is each
    row's next position id. Columns [0, cols) are stored; a forward writes after them."""

    def __init__(self, model, prompts: list[list[int]], capacity: int, mask_token_id: int):
        dev = next(model.parameters()).device
        n, P = len(prompts), max(len(p) for p in prompts)
        self.model, self.mask_token_id = model, mask_token_id
        self.cache = KVCache.for_model(model, n, capacity)
        self.seq = torch.full((n, capacity), mask_token_id, dtype=torch.long, device=dev)
        self.valid = torch.zeros((n, capacity), dtype=torch.bool, device=dev)
        for r, p in enumerate(prompts):
            self.seq[r, P - len(p):P] = torch.tensor(p, device=dev)
            self.valid[r, P - len(p):P] = True
        self.pos = torch.tensor([len(p) - P for p in prompts], device=dev)  # pads: < 0
        self.cols, self.prompt_cols = 0, P
        self.steps = torch.arange(capacity, device=dev)
        # a block-causal model stores each committed block bidirectionally (masks)
        self.block_causal = getattr(model, "nextblock_attention", None) == "block_causal"

    def mask(self, T: int, causal: bool, noisy_from: int | None = None,
             lengths: torch.Tensor | None = None, commit: int = 0) -> torch.Tensor:
        """Mask for a chunk of T columns after the stored ones (built once per chunk shape).
        `lengths[r]` < T: row r's block is shorter (its last one); the rest is not its key.
        `commit`: the chunk's first columns are a block being stored (bidirectional for a
        block-causal model)."""
        if self.cols + T > self.cache.max_len:
            self._grow(self.cols + T)
        if self.cols >= self.prompt_cols:  # generated columns are real keys (the prompt
            # sets its own, also when it is prefilled in chunks)
            chunk = self.valid[:, self.cols:self.cols + T]
            chunk[:] = True if lengths is None else self.steps[None, :T] < lengths[:, None]
        return masks.decode_mask(self.valid[:, :self.cols + T], self.cols, T, causal,
                                 noisy_from, commit if self.block_causal else 0)

    def forward(self, tokens, mask, store: int = 0, logits_from: int = 0) -> torch.Tensor:
        """Run tokens [n, T] after the stored columns; keep the first `store` of them."""
        T = tokens.shape[1]
        positions = (self.pos[:, None] + self.steps[:T]).clamp(min=0)
        logits = forward(self.model, tokens, positions, mask, self.cache, logits_from)
        if store:
            self.cache.commit(store)
            self.seq[:, self.cols:self.cols + store] = tokens[:, :store]
            self.pos += store
            self.cols += store
        return logits

    def history(self, block: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids seen by each row (stored, then `block`), for the repetition penalty."""
        stored = self.seq[:, :self.cols]
        return stored if block is None else torch.cat([stored, block], dim=1)

    def reject(self, kept: torch.Tensor, T: int) -> None:
        """Of the last T stored columns, row r keeps the first kept[r]; the rest become holes
        (never attended again). Trailing holes shared by every row are truncated away."""
        cols = self.steps[self.cols - T:self.cols]
        hole = cols[None, :] >= (self.cols - T + kept)[:, None]
        self.valid[:, self.cols - T:self.cols] &= ~hole
        self.seq[:, self.cols - T:self.cols].masked_fill_(hole, self.mask_token_id)
        self.pos -= T - kept
        common = int((T - kept).min())
        self.cols -= common
        self.cache.truncate(self.cols)

    def copy(self, capacity: int) -> "Rows":
        """An independent copy with room for `capacity` columns."""
        new = object.__new__(Rows)
        new.__dict__.update(self.__dict__)
        cap = max(capacity, self.cols)
        new.cache = self.cache.clone(cap)
        n = self.seq.shape[0]
        new.seq = self.seq.new_full((n, cap), self.mask_token_id)
        new.valid = self.valid.new_zeros((n, cap))
        new.seq[:, :self.cols], new.valid[:, :self.cols] = (self.seq[:, :self.cols],
                                                            self.valid[:, :self.cols])
        new.pos, new.steps = self.pos.clone(), torch.arange(cap, device=self.seq.device)
        return new

    def prefill(self, ids: torch.Tensor, chunk: int) -> torch.Tensor:
        """Store prompt tokens [n, T] a chunk at a time (memory stays bounded for long
        prompts): the left-padded prompts of a fresh Rows, or the rest of a prompt whose
        prefix is stored (one row, no padding). Returns the last position's logits."""
        T = ids.shape[1]
        if self.cols:  # continuing a stored prefix: these columns are all real keys
            self.valid[:, self.cols:self.cols + T] = True
        self.prompt_cols = self.cols + T
        for c0 in range(0, T, chunk):
            t = min(T - c0, chunk)
            logits = self.forward(ids[:, c0:c0 + t], self.mask(t, True), store=t,
                                  logits_from=t - 1)
        return logits

    def keep_rows(self, idx: torch.Tensor) -> None:
        """Keep rows idx (row i becomes row idx[i]). Leading columns that none of them
        attends to (the left padding a departed row's longer history forced on the others)
        are dropped once they are half the stored columns: under continuous batching the
        batch never empties, and without this every forward would attend over the history
        of every row that ever joined; dropping them costs a copy of the whole cache, so it
        waits until it pays (the columns are masked keys meanwhile)."""
        valid = self.valid[idx, :self.cols]
        d = int(valid.any(0).int().argmax()) if self.cols else 0
        d = d if 2 * d >= self.cols else 0
        self.cache.keep_rows(idx, d)  # keeps its slots: the columns move, the width stays
        seq, valid = self.seq[idx], self.valid[idx]
        if d:
            seq = torch.cat([seq[:, d:], seq.new_full((len(idx), d), self.mask_token_id)], 1)
            valid = torch.cat([valid[:, d:], valid.new_zeros((len(idx), d))], 1)
        self.seq, self.valid, self.pos = seq, valid, self.pos[idx]
        self.cols -= d
        self.prompt_cols = max(0, self.prompt_cols - d)

    def merge(self, other: "Rows") -> None:
        """Append another batch's rows (just prefilled), right-aligning the stored columns:
        the shorter side gets left padding (columns that are never keys)."""
        if other.cols > self.cols:
            self._shift(other.cols - self.cols)
        off, oc = self.cols - other.cols, other.cols
        need = max(self.cache.max_len, off + other.cache.max_len)
        if need > self.cache.max_len:
            self._grow(need)
        cap = self.cache.max_len
        n, n2 = self.seq.shape[0], other.seq.shape[0]
        self.cache.add_rows(n2)  # a spare slot each: the stored rows are not copied
        for mine, theirs in ((self.cache.k, other.cache.k), (self.cache.v, other.cache.v)):
            mine[:, n:, :, off:off + oc] = theirs[:, :, :, :oc]
        seq = self.seq.new_full((n2, cap), self.mask_token_id)
        seq[:, off:off + oc] = other.seq[:, :oc]
        valid = self.valid.new_zeros((n2, cap))
        valid[:, off:off + oc] = other.valid[:, :oc]
        self.seq, self.valid = torch.cat([self.seq, seq]), torch.cat([self.valid, valid])
        self.pos = torch.cat([self.pos, other.pos])

    def _shift(self, d: int) -> None:
        """Move every stored column d places right (d columns of left padding)."""
        if self.cols + d > self.cache.max_len:
            self._grow(self.cols + d)
        c = self.cols
        for t in (self.cache.k, self.cache.v):
            t[:, :, :, d:d + c] = t[:, :, :, :c].clone()
        self.seq[:, d:d + c] = self.seq[:, :c].clone()
        self.valid[:, d:d + c] = self.valid[:, :c].clone()
        self.seq[:, :d], self.valid[:, :d] = self.mask_token_id, False
        self.cols += d
        self.cache.length = self.cols

    def _grow(self, need: int) -> None:
        size = max(need, 2 * self.cache.max_len)
        self.cache.grow(size)
        n = self.seq.shape[0]
        self.seq = torch.cat([self.seq, self.seq.new_full((n, size - self.seq.shape[1]),
                                                          self.mask_token_id)], dim=1)
        self.valid = torch.cat([self.valid, self.valid.new_zeros(
            (n, size - self.valid.shape[1]))], dim=1)
        self.steps = torch.arange(size, device=self.seq.device)
