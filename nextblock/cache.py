"""Static KV cache with peek / commit / truncate.

Buffers are preallocated for the whole generation ([layers, batch, kv_heads, max_len, dim]).
A forward always writes its keys/values into the slots just past `length` and attends to
[0, length + T). Whether they are *stored* is only a matter of advancing `length`:

    peek    (denoise step): write, attend, do not advance -> the next write overwrites them
    commit  (causal pass):  write, attend, advance        -> exactly what an AR model holds
    truncate(n):            length = n (verified decoding drops rejected tokens)
    grow(n):                more slots, stored ones kept
    clone(n):               an independent copy (a prefilled prompt decoded several times)
    keep_rows(idx, d):      rows leave a batch; its first d slots (keys of no row) go too
    add_rows(n):            rows join a batch (continuous batching)

`k` and `v` are views of the first `batch` rows of buffers that may hold spare rows, so rows
can leave and join without copying the whole cache: a leaving row's slot is refilled by
moving one later row into it (`keep_rows` with such an order), a joining row takes a spare
slot. Each layer's [batch, heads, slots, dim] block stays contiguous (the int8 engine's
layout; it steps from layer to layer by `k.stride(0)`).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device=None):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self._set(torch.zeros(shape, dtype=dtype, device=device),
                  torch.zeros(shape, dtype=dtype, device=device))
        self.length = 0

    def _set(self, k: torch.Tensor, v: torch.Tensor, rows: int | None = None) -> None:
        """New buffers (kept, spare rows included) and the live views of their first rows."""
        self._buf = (k, v)
        n = k.shape[1] if rows is None else rows
        self.k, self.v = k[:, :n], v[:, :n]

    @classmethod
    def for_model(cls, model, batch: int, max_len: int) -> "KVCache":
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        p = next(model.parameters())
        return cls(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, head_dim, max_len,
                   dtype=p.dtype, device=p.device)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def bytes_per_token(self) -> int:
        """Memory one position costs: keys and values of every layer and KV head, nothing
        else (GQA models store only their KV heads)."""
        layers, batch, heads, _, dim = self.k.shape
        return 2 * layers * batch * heads * dim * self.k.element_size()

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Put a chunk's keys/values after the stored ones; return keys/values to attend to."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} > {self.max_len} slots")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def commit(self, n: int) -> None:
        """Keep the last written n slots (a causal pass): they become part of the context."""
        if self.length + n > self.max_len:
            raise RuntimeError("KV cache overflow on commit")
        self.length += n

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {n}")
        self.length = n

    def grow(self, max_len: int) -> None:
        """Reallocate for `max_len` slots, keeping what is stored (rare: batches in verified
        mode, whose rejected drafts leave holes, can need more slots than tokens)."""
        if max_len <= self.max_len:
            return
        new = []
        for old in self._buf:  # spare rows are kept: rows may still join
            t = old.new_zeros(old.shape[:3] + (max_len,) + old.shape[4:])
            t[:, :, :, :self.length] = old[:, :, :, :self.length]
            new.append(t)
        self._set(*new, rows=self.k.shape[1])

    def clone(self, max_len: int | None = None) -> "KVCache":
        """An independent copy with `max_len` slots (at least the stored ones)."""
        new = KVCache.__new__(KVCache)
        size = max(self.length, max_len or self.max_len)
        shape = self.k.shape[:3] + (size,) + self.k.shape[4:]
        new._set(self.k.new_zeros(shape), self.v.new_zeros(shape))
        new.k[:, :, :, :self.length] = self.k[:, :, :, :self.length]
        new.v[:, :, :, :self.length] = self.v[:, :, :, :self.length]
        new.length = self.length
        return new

    def keep_rows(self, rows: torch.Tensor, drop_front: int = 0) -> None:
        """Keep batch rows `rows` (in that order) and drop the first `drop_front` slots
        (columns no remaining row attends to). Only stored slots are copied, and without
        drop_front only the rows that change place (row i takes rows[i])."""
        if not 0 <= drop_front <= self.length:
            raise ValueError(f"cannot drop {drop_front} of {self.length} stored slots")
        n, L, d = len(rows), self.length, drop_front
        order = rows.tolist()
        moved = [(i, r) for i, r in enumerate(order) if r != i or d]
        if moved:
            dst = torch.tensor([i for i, _ in moved], device=self.k.device)
            src = torch.tensor([r for _, r in moved], device=self.k.device)
            for base, t in zip(self._buf, (self.k, self.v)):
                base[:, dst, :, :L - d] = t[:, src, :, d:L]  # the gather copies first
        self._set(*self._buf, rows=n)
        self.length -= d

    def add_rows(self, n: int) -> None:
        """Append n rows (a spare slot each, else buffers with room for twice as many);
        what they hold is for the caller to write."""
        B = self.k.shape[1]
        if B + n > self._buf[0].shape[1]:
            cap = max(B + n, 2 * B)
            shape = self.k.shape[:1] + (cap,) + self.k.shape[2:]
            new = (self.k.new_zeros(shape), self.v.new_zeros(shape))
            for t, old in zip(new, (self.k, self.v)):
                t[:, :B, :, :self.length] = old[:, :, :, :self.length]
            self._buf = new
        self._set(*self._buf, rows=B + n)

    def stored(self, layer: int):
        """(keys, values) held for the context: [batch, kv_heads, length, dim] each."""
        return self.k[layer, :, :, :self.length], self.v[layer, :, :, :self.length]
