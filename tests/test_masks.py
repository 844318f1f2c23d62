"""The mask module against brute-force definitions written from the design's table."""

import random

import pytest
import torch
import torch.nn.functional as F

from nextblock import masks


def brute_training(L, b, n=None, off=0, docs=None, block_causal=False):
    """Section 2 table, one (query, key) pair at a time. n: real tokens per half; off: where
    the block grid starts (blocks before it counted backwards from it); docs: the document
    of each token (packed: no attention across documents, each with its own grid).
    block_causal (SDAR / Fast-dLLM v2): a clean token of a block of the grid sees its whole
    block and the earlier ones; before the grid (the prompt) the clean half stays causal."""
    n = L if n is None else n
    docs = docs or [0] * L
    start = [docs.index(d) for d in docs]
    blk = lambda i: (i - start[i] - off) // b  # Python floor division
    m = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    for q in range(2 * L):
        for k in range(2 * L):
            q_noisy, k_noisy = q < L, k < L
            qi, ki = (q if q_noisy else q - L), (k if k_noisy else k - L)
            if q_noisy and k_noisy:
                ok = blk(qi) == blk(ki)  # own block, bidirectional
            elif q_noisy:
                ok = blk(ki) < blk(qi)  # clean tokens of earlier blocks
            elif k_noisy:
                ok = False  # clean never sees noisy
            elif block_causal and blk(qi) >= 0:
                ok = blk(ki) <= blk(qi)  # block-causal: own block whole, earlier blocks
            else:
                ok = ki <= qi  # clean half is a plain causal LM
            ok = ok and docs[qi] == docs[ki]
            if ki >= n:
                ok = False  # padding key
            if qi >= n:
                ok = q == k  # padding query sees only itself
            m[q, k] = ok
    return m


def brute_decode(valid, start, T, causal, commit_len=0):
    B = len(valid)
    m = torch.zeros(B, 1, T, start + T, dtype=torch.bool)
    for r in range(B):
        for q in range(T):
            qa = start + q
            for k in range(start + T):
                ok = (k < start) or (k <= qa if causal else True)
                if q < commit_len:  # a block-causal commit: the stored block sees itself
                    ok = k < start + commit_len
                ok = (ok and bool(valid[r][k])) or k == qa
                m[r, 0, q, k] = ok
    return m


@pytest.mark.parametrize("seed", range(6))
def test_training_mask_matches_table(seed):
    rng = random.Random(seed)
    L, b = rng.randint(1, 17), rng.randint(1, 9)
    lengths = torch.tensor([rng.randint(1, L) for _ in range(3)])
    full = masks.training_mask(L, b)
    assert torch.equal(full[0, 0], brute_training(L, b))
    padded = masks.training_mask(L, b, lengths)
    for r, n in enumerate(lengths.tolist()):
        assert torch.equal(padded[r, 0], brute_training(L, b, n))
    offsets = torch.tensor([rng.randint(0, L - 1) for _ in range(3)])
    shifted = masks.training_mask(L, b, lengths, offsets=offsets)
    for r, (n, off) in enumerate(zip(lengths.tolist(), offsets.tolist())):
        assert torch.equal(shifted[r, 0], brute_training(L, b, n, off))


def test_training_mask_block_one_is_causal_on_both_halves():
    L = 6
    m = masks.training_mask(L, 1)[0, 0]
    # b=1: a noisy token sees no noisy token but itself and the clean tokens before it
    assert torch.equal(m[:L, :L], torch.eye(L, dtype=torch.bool))
    assert torch.equal(m[:L, L:], torch.ones(L, L, dtype=torch.bool).tril(-1))
    assert torch.equal(m[L:, L:], torch.ones(L, L, dtype=torch.bool).tril())


@pytest.mark.parametrize("seed", range(6))
def test_decode_masks_match_definition(seed):
    rng = random.Random(100 + seed)
    B, start, T = rng.randint(1, 3), rng.randint(0, 12), rng.randint(1, 8)
    pads = [rng.randint(0, start) for _ in range(B)]
    valid = torch.tensor([[k >= p for k in range(start + T)] for p in pads])
    for causal in (True, False):
        got = masks.decode_mask(valid, start, T, causal)
        assert torch.equal(got, brute_decode(valid.tolist(), start, T, causal))
    c = rng.randint(1, T)
    got = masks.decode_mask(valid, start, T, True, commit_len=c)
    assert torch.equal(got, brute_decode(valid.tolist(), start, T, True, commit_len=c))


@pytest.mark.parametrize("seed", range(6))
def test_block_causal_training_mask_matches_definition(seed):
    rng = random.Random(400 + seed)
    L, b = rng.randint(1, 17), rng.randint(1, 9)
    lengths = torch.tensor([rng.randint(1, L) for _ in range(3)])
    offsets = torch.tensor([rng.randint(0, L - 1) for _ in range(3)])
    got = masks.training_mask(L, b, lengths, offsets=offsets, block_causal=True)
    for r, (n, off) in enumerate(zip(lengths.tolist(), offsets.tolist())):
        assert torch.equal(got[r, 0], brute_training(L, b, n, off, block_causal=True))
    docs = random_docs(rng, L, 3)
    got = masks.training_mask(L, b, lengths, docs=torch.tensor(docs), block_causal=True)
    for r in range(3):
        want = brute_training(L, b, lengths[r].item(), docs=docs[r], block_causal=True)
        assert torch.equal(got[r, 0], want)
    if b > 1 and L > b:  # it differs from the context-causal mask exactly in the clean half
        plain = masks.training_mask(L, b)[0, 0]
        bc = masks.training_mask(L, b, block_causal=True)[0, 0]
        assert torch.equal(plain[:L], bc[:L]) and not torch.equal(plain[L:], bc[L:])


def test_block_causal_commit_of_block_equals_training_clean_rows():
    """A block-causal model stores block k as its training clean rows see it: the clean
    prefix (cache) plus the whole block."""
    L, b = 12, 4
    train = masks.training_mask(L, b, block_causal=True)[0, 0]
    for k in range(L // b):
        start = k * b
        rows = train[L + start:L + start + b, L:L + start + b]
        commit = masks.decode_mask(torch.ones(1, start + b, dtype=torch.bool), start, b, True,
                                   commit_len=b)
        assert torch.equal(rows, commit[0, 0])


def test_denoise_mask_of_block_equals_training_noisy_rows():
    """The training rule for noisy block k == the inference denoise rule for that block with
    the clean prefix in the cache (the keys mapped clean-prefix -> cache, own block -> chunk)."""
    L, b = 12, 4
    train = masks.training_mask(L, b)[0, 0]
    for k in range(L // b):
        start = k * b
        rows = train[start:start + b]
        seen = torch.cat([rows[:, L:L + start], rows[:, start:start + b]], dim=1)
        denoise = masks.decode_mask(torch.ones(1, start + b, dtype=torch.bool), start, b, False)
        assert torch.equal(seen, denoise[0, 0])
        assert rows.sum() == b * (start + b)  # and nothing else


@pytest.mark.parametrize("L,b", [(64, 8), (96, 32), (40, 5)])
def test_block_sparse_form_gives_same_attention(L, b):
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(0)
    lengths = torch.tensor([L, L - 7])
    mod = masks.training_mask_mod(L, b, lengths)
    q, k, v = (torch.randn(2, 2, 2 * L, 16) for _ in range(3))
    dense = masks.dense(mod, 2, 2 * L, 2 * L)
    block = masks.block_sparse(mod, 2, 2 * L, 2 * L, block=32)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    got = flex_attention(q, k, v, block_mask=block)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def random_docs(rng, L, rows):
    """Per-token document ids of packed rows: runs of random lengths."""
    out = []
    for _ in range(rows):
        ids, d = [], 0
        while len(ids) < L:
            ids += [d] * rng.randint(1, L)
            d += 1
        out.append(ids[:L])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_training_mask_with_documents_matches_table(seed):
    rng = random.Random(200 + seed)
    L, b = rng.randint(2, 17), rng.randint(1, 6)
    docs = random_docs(rng, L, 3)
    lengths = torch.tensor([rng.randint(1, L) for _ in range(3)])
    got = masks.training_mask(L, b, lengths, docs=torch.tensor(docs))
    for r in range(3):
        assert torch.equal(got[r, 0], brute_training(L, b, lengths[r].item(), docs=docs[r]))


def assemble(chunked, n_q, n_kv):
    """The full mask a Chunked mask stands for: every chunk's keys scattered into place."""
    full = torch.zeros(chunked.batch, 1, n_q, n_kv, dtype=torch.bool)
    covered = 0
    for i, (q0, q1, kv) in enumerate(chunked.chunks):
        assert q0 == covered  # chunks tile the queries in order
        full[:, :, q0:q1, kv] = chunked.mask(i)
        covered = q1
    assert covered == n_q
    return full


@pytest.mark.parametrize("seed", range(8))
def test_chunked_training_mask_is_the_dense_mask(seed):
    """Each chunk's key set is a superset of what the rule allows: nothing is lost."""
    rng = random.Random(300 + seed)
    L, b, chunk = rng.randint(4, 40), rng.randint(1, 6), rng.randint(1, 16)
    B = 2
    kw = dict(lengths=torch.tensor([rng.randint(1, L) for _ in range(B)]))
    if seed % 2:
        kw["docs"] = torch.tensor(random_docs(rng, L, B))
    else:
        kw["offsets"] = torch.tensor([rng.randint(0, L - 1) for _ in range(B)])
    for bc in (False, True):
        dense = masks.training_mask(L, b, block_causal=bc, **kw)
        chunked = masks.training_chunks(L, b, chunk=chunk, block_causal=bc, **kw)
        assert torch.equal(assemble(chunked, 2 * L, 2 * L), dense)
        clean = masks.training_chunks(L, b, chunk=chunk, clean_only=True, block_causal=bc, **kw)
        assert torch.equal(assemble(clean, L, L), dense[:, :, L:, L:])


def test_chunked_mask_keys_grow_linearly():
    """Chunks of a 2L layout see O(L) keys each, never the whole 2L x 2L square."""
    L, chunk = 4096, 512
    chunked = masks.training_chunks(L, 4, chunk=chunk)
    per_chunk = [len(kv) for _, _, kv in chunked.chunks]
    assert max(per_chunk) <= L + chunk + 8
    assert sum(q1 - q0 for q0, q1, _ in chunked.chunks) == 2 * L
    assert sum(c * chunk for c in per_chunk) < 0.6 * (2 * L) ** 2  # a dense mask is 4 L^2
