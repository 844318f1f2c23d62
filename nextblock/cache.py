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
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device=None):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

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
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[:3] + (max_len,) + old.shape[4:])
            new[:, :, :, :self.length] = old[:, :, :, :self.length]
            setattr(self, name, new)

    def clone(self, max_len: int | None = None) -> "KVCache":
        """An independent copy with `max_len` slots (at least the stored ones)."""
        new = KVCache.__new__(KVCache)
        size = max(self.length, max_len or self.max_len)
        shape = self.k.shape[:3] + (size,) + self.k.shape[4:]
        new.k, new.v = self.k.new_zeros(shape), self.v.new_zeros(shape)
        new.k[:, :, :, :self.length] = self.k[:, :, :, :self.length]
        new.v[:, :, :, :self.length] = self.v[:, :, :, :self.length]
        new.length = self.length
        return new

    def keep_rows(self, rows: torch.Tensor, drop_front: int = 0) -> None:
        """Drop finished batch rows (rows: indices to keep) and the first `drop_front` slots
        (columns no remaining row attends to), in one copy."""
        if not 0 <= drop_front <= self.length:
            raise ValueError(f"cannot drop {drop_front} of {self.length} stored slots")
        self.k = self.k[:, :, :, drop_front:].index_select(1, rows)
        self.v = self.v[:, :, :, drop_front:].index_select(1, rows)
        self.length -= drop_front

    def stored(self, layer: int):
        """(keys, values) held for the context: [batch, kv_heads, length, dim] each."""
        return self.k[layer, :, :, :self.length], self.v[layer, :, :, :self.length]
