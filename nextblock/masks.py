"""Every attention pattern of the system, defined once as a `mask_mod(batch, head, q, kv)`
rule (True = may attend) and turned into a dense boolean mask for SDPA or, for long
sequences, a block-sparse flex-attention BlockMask. Training and inference use the same rules.

Training, one sequence of length 2L = [noisy x_t | clean x], same position ids in both halves
(design section 2):

    query \\ key            noisy x_t                     clean x
    noisy token, block k    own block k, bidirectional    clean tokens of blocks < k
    clean token i           nothing                       clean tokens j <= i (causal)

Inference, a chunk of T query positions starting at absolute position `start`, over the
cached keys [0, start) and the chunk itself:
    denoise  (causal=False): everything cached + every position of its own block
    commit / prefill (causal=True): everything cached + causal inside the chunk
    fused    (causal=True, noisy_from=b): the first b queries commit a block (causal), the
             rest are the next block's denoise step (cache + committed block + own block)

Padding: keys that are padding are never attended; a padding query attends only to itself,
so no row of the softmax is empty (its output is never used).
"""

from __future__ import annotations

import torch

MaskMod = "Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]"


def training_mask_mod(seq_len: int, block_size: int, lengths: torch.Tensor | None = None,
                      offsets: torch.Tensor | None = None):
    """Rule for the [noisy | clean] training layout; `lengths[b]` real tokens per half
    (right padding), None when every row is full; `offsets[b]` where row b's block grid
    starts (SFT: the response start, so blocks line up with inference), default 0."""
    L, bs = seq_len, block_size

    def mask_mod(b, h, q, kv):
        q_noisy, kv_noisy = q < L, kv < L
        qp, kp = q % L, kv % L  # position inside its half
        if offsets is None:
            qb, kb = qp // bs, kp // bs
        else:  # floor division: positions before the offset get negative block ids
            qb = torch.div(qp - offsets[b], bs, rounding_mode="floor")
            kb = torch.div(kp - offsets[b], bs, rounding_mode="floor")
        allowed = (
            (q_noisy & kv_noisy & (qb == kb))
            | (q_noisy & ~kv_noisy & (kb < qb))
            | (~q_noisy & ~kv_noisy & (kp <= qp))
        )
        if lengths is not None:
            n = lengths[b]
            allowed = (allowed & (kp < n) & (qp < n)) | (q == kv)
        return allowed

    return mask_mod


def decode_mask_mod(start: int, causal: bool, key_valid: torch.Tensor | None = None,
                    noisy_from: int | None = None):
    """Rule for a chunk of queries at absolute positions start, start+1, ... over keys
    [0, start + T): the cache plus the chunk. `key_valid[b, kv]` False marks padding (and the
    holes verified decoding leaves). Queries from chunk index `noisy_from` on (0 when not
    causal) form a noisy block: they also see every later position of the chunk."""
    noisy = 0 if not causal else noisy_from

    def mask_mod(b, h, q, kv):
        qa = q + start
        allowed = kv <= qa
        if noisy is not None:
            allowed = allowed | ((q >= noisy) & (kv >= start + noisy))
        if key_valid is not None:
            allowed = (allowed & key_valid[b, kv]) | (kv == qa)
        return allowed

    return mask_mod


def dense(mask_mod, batch: int, q_len: int, kv_len: int, device=None) -> torch.Tensor:
    """Evaluate a rule on every (q, kv) pair: bool tensor [batch, 1, q_len, kv_len]."""
    b = torch.arange(batch, device=device).view(batch, 1, 1)
    q = torch.arange(q_len, device=device).view(1, q_len, 1)
    kv = torch.arange(kv_len, device=device).view(1, 1, kv_len)
    h = torch.zeros((), dtype=torch.long, device=device)
    return mask_mod(b, h, q, kv).expand(batch, q_len, kv_len).unsqueeze(1)


def block_sparse(mask_mod, batch: int, q_len: int, kv_len: int, device=None, block: int = 128):
    """The same rule as a flex-attention BlockMask: memory O(T^2 / block^2), not O(T^2)."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(
        mask_mod, batch, None, q_len, kv_len, device=device or "cpu", BLOCK_SIZE=block
    )


def training_mask(seq_len: int, block_size: int, lengths: torch.Tensor | None = None,
                  batch: int = 1, device=None, offsets: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Dense [batch, 1, 2L, 2L] training mask."""
    for t in (lengths, offsets):
        if t is not None:
            batch = t.shape[0]
    mod = training_mask_mod(seq_len, block_size, lengths, offsets)
    return dense(mod, batch, 2 * seq_len, 2 * seq_len, device)


def decode_mask(key_valid: torch.Tensor, start: int, length: int, causal: bool,
                noisy_from: int | None = None) -> torch.Tensor:
    """Dense [batch, 1, length, start + length] mask for one prefill / denoise / commit chunk
    (or a fused commit + denoise chunk, with `noisy_from`)."""
    mod = decode_mask_mod(start, causal, key_valid, noisy_from)
    return dense(mod, key_valid.shape[0], length, start + length, key_valid.device)
