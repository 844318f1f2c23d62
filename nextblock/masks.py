"""Every attention pattern of the system, defined once as a `mask_mod(batch, head, q, kv)`
rule (True = may attend) and turned into a dense boolean mask for SDPA or, for long
training sequences, a `Chunked` mask (query chunks, each with the keys it may see: memory
linear in length, works with autograd on any device) or a block-sparse flex-attention
BlockMask. Training and inference use the same rules.

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

Block-causal training (`block_causal=True`, the SDAR / Fast-dLLM v2 choice, kept for the
paper's ablation): a clean token also sees the rest of its own block, so the clean half is
bidirectional inside each block of the grid (blocks before the grid start, the prompt, stay
causal, so both variants prefill a prompt the same way). Its next-token targets leak, so it
trains without the AR loss, and decoding stores each committed block with the block
bidirectional (`commit_len`).

Packed documents (training): tokens of different documents never attend each other, and
each document has its own positions and block grid.

Padding: keys that are padding are never attended; a padding query attends only to itself,
so no row of the softmax is empty (its output is never used).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MaskMod = "Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]"


def document_positions(docs: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its document, from per-token document ids [B, L]
    (packed rows: every document starts again at position 0)."""
    B, L = docs.shape
    idx = torch.arange(L, device=docs.device).expand(B, L)
    first = torch.ones((B, 1), dtype=torch.bool, device=docs.device)
    starts = torch.cat([first, docs[:, 1:] != docs[:, :-1]], dim=1)
    return idx - torch.where(starts, idx, 0).cummax(dim=1).values


def training_mask_mod(seq_len: int, block_size: int, lengths: torch.Tensor | None = None,
                      offsets: torch.Tensor | None = None, docs: torch.Tensor | None = None,
                      block_causal: bool = False):
    """Rule for the [noisy | clean] training layout; `lengths[b]` real tokens per half
    (right padding), None when every row is full; `offsets[b]` where row b's block grid
    starts (SFT: the response start, so blocks line up with inference), default 0;
    `docs[b, i]` the document of token i in a packed row: no pair of tokens from different
    documents may attend, and each document's block grid starts at its first token.
    `block_causal`: a clean token of block k >= 0 also sees the rest of block k."""
    L, bs = seq_len, block_size
    if docs is None and offsets is None:  # one grid from position 0, the same for every row
        def block_of(b, p):
            return torch.div(p, bs, rounding_mode="floor")
    else:
        pos = (torch.arange(L, device=offsets.device) if docs is None
               else document_positions(docs))
        grid = pos if offsets is None else pos - offsets[:, None]
        # floor division: positions before the offset get negative block ids
        blocks = torch.div(grid, bs, rounding_mode="floor").expand(
            (docs if docs is not None else offsets).shape[0], L)

        def block_of(b, p):
            return blocks[b, p]

    def mask_mod(b, h, q, kv):
        q_noisy, kv_noisy = q < L, kv < L
        qp, kp = q % L, kv % L  # position inside its half
        qb, kb = block_of(b, qp), block_of(b, kp)
        clean = (kp <= qp) | ((qb == kb) & (qb >= 0)) if block_causal else (kp <= qp)
        allowed = (
            (q_noisy & kv_noisy & (qb == kb))
            | (q_noisy & ~kv_noisy & (kb < qb))
            | (~q_noisy & ~kv_noisy & clean)
        )
        if docs is not None:
            allowed = allowed & (docs[b, qp] == docs[b, kp])
        if lengths is not None:
            n = lengths[b]
            allowed = (allowed & (kp < n) & (qp < n)) | (q == kv)
        return allowed

    return mask_mod


def decode_mask_mod(start: int, causal: bool, key_valid: torch.Tensor | None = None,
                    noisy_from: int | None = None, commit_len: int = 0):
    """Rule for a chunk of queries at absolute positions start, start+1, ... over keys
    [0, start + T): the cache plus the chunk. `key_valid[b, kv]` False marks padding (and the
    holes verified decoding leaves). Queries from chunk index `noisy_from` on (0 when not
    causal) form a noisy block: they also see every later position of the chunk.
    `commit_len` c: the first c queries, a block being stored by a block-causal model, see
    each other (the block bidirectional)."""
    noisy = 0 if not causal else noisy_from

    def mask_mod(b, h, q, kv):
        qa = q + start
        allowed = kv <= qa
        if commit_len:
            allowed = allowed | ((q < commit_len) & (kv < start + commit_len))
        if noisy is not None:
            allowed = allowed | ((q >= noisy) & (kv >= start + noisy))
        if key_valid is not None:
            allowed = (allowed & key_valid[b, kv]) | (kv == qa)
        return allowed

    return mask_mod


def dense(mask_mod, batch: int, q_len: int, kv_len: int, device=None) -> torch.Tensor:
    """Evaluate a rule on every (q, kv) pair: bool tensor [batch, 1, q_len, kv_len]."""
    return dense_at(mask_mod, batch, torch.arange(q_len, device=device),
                    torch.arange(kv_len, device=device))


def dense_at(mask_mod, batch: int, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Evaluate a rule on the pairs of given query and key indices: [batch, 1, |q|, |kv|]."""
    b = torch.arange(batch, device=q.device).view(batch, 1, 1)
    h = torch.zeros((), dtype=torch.long, device=q.device)
    out = mask_mod(b, h, q.view(1, -1, 1), kv.view(1, 1, -1))
    return out.expand(batch, q.numel(), kv.numel()).unsqueeze(1)


@dataclass
class Chunked:
    """A mask too large to build whole (long training sequences): the queries are cut into
    chunks, and chunk i = (q0, q1, kv) attends only the key indices `kv` (a superset of what
    the rule allows it), through a small dense mask built when needed. The attention is
    computed chunk by chunk (nextblock.modeling), so memory grows linearly with length."""

    mask_mod: object
    batch: int
    chunks: list  # (q0, q1, kv index tensor)

    def mask(self, i: int) -> torch.Tensor:
        q0, q1, kv = self.chunks[i]
        return dense_at(self.mask_mod, self.batch, torch.arange(q0, q1, device=kv.device), kv)


def training_chunks(seq_len: int, block_size: int, lengths: torch.Tensor | None = None,
                    offsets: torch.Tensor | None = None, docs: torch.Tensor | None = None,
                    batch: int = 1, device=None, chunk: int = 512,
                    clean_only: bool = False, block_causal: bool = False) -> Chunked:
    """The training rule as a Chunked mask. A noisy query chunk [a, e) needs the noisy keys
    of the blocks it touches ([a - bs + 1, e + bs - 1)) and the clean keys from its earliest
    document start to e; a clean chunk, the clean keys from its document start to e (to the
    end of the block holding e - 1 when `block_causal`).
    `clean_only`: the layout is the clean half alone (block size 1: no noisy copy)."""
    L, bs = seq_len, block_size
    mod = training_mask_mod(L, bs, lengths, offsets, docs, block_causal)
    for t in (lengths, offsets, docs):
        if t is not None:
            batch, device = t.shape[0], t.device
    # the first token of each token's document (0 without documents); a chunk needs the
    # keys from the earliest one over the batch
    first = None if docs is None else torch.arange(L, device=device) - document_positions(docs)
    shift = 0 if clean_only else L  # index of the clean half's first token
    out = []
    for a in range(0, L, chunk):
        e = min(L, a + chunk)
        lo = 0 if first is None else int(first[:, a].min())
        clean = torch.arange(lo, min(L, e + bs - 1) if block_causal else e, device=device)
        if not clean_only:
            noisy = torch.arange(max(0, a - bs + 1), min(L, e + bs - 1), device=device)
            out.append((a, e, torch.cat([noisy, L + clean])))
        out.append((shift + a, shift + e, shift + clean))
    out.sort(key=lambda c: c[0])
    if clean_only:  # the rule is written for the doubled layout: shift indices into it
        return Chunked(lambda b, h, q, kv: mod(b, h, q + L, kv + L), batch, out)
    return Chunked(mod, batch, out)


def block_sparse(mask_mod, batch: int, q_len: int, kv_len: int, device=None, block: int = 128):
    """The same rule as a flex-attention BlockMask: memory O(T^2 / block^2), not O(T^2)."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(
        mask_mod, batch, None, q_len, kv_len, device=device or "cpu", BLOCK_SIZE=block
    )


def training_mask(seq_len: int, block_size: int, lengths: torch.Tensor | None = None,
                  batch: int = 1, device=None, offsets: torch.Tensor | None = None,
                  docs: torch.Tensor | None = None, block_causal: bool = False) -> torch.Tensor:
    """Dense [batch, 1, 2L, 2L] training mask."""
    for t in (lengths, offsets, docs):
        if t is not None:
            batch = t.shape[0]
    mod = training_mask_mod(seq_len, block_size, lengths, offsets, docs, block_causal)
    return dense(mod, batch, 2 * seq_len, 2 * seq_len, device)


def decode_mask(key_valid: torch.Tensor, start: int, length: int, causal: bool,
                noisy_from: int | None = None, commit_len: int = 0) -> torch.Tensor:
    """Dense [batch, 1, length, start + length] mask for one prefill / denoise / commit chunk
    (or a fused commit + denoise chunk, with `noisy_from`; `commit_len`: block-causal commit)."""
    mod = decode_mask_mod(start, causal, key_valid, noisy_from, commit_len)
    return dense(mod, key_valid.shape[0], length, start + length, key_valid.device)
