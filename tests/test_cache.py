"""The KV cache: after prefill and commits it holds exactly what a causal forward holds;
peeks leave no trace; truncation and row selection."""

import torch

from nextblock import masks
from nextblock.cache import KVCache
from nextblock.modeling import forward
from tests.helpers import MASK, random_prompts, tiny_model


def hf_causal_kv(model, tokens):
    out = model(torch.tensor([tokens]), use_cache=True)
    return [(layer.keys, layer.values) for layer in out.past_key_values.layers]


def run_chunk(model, cache, tokens, start, causal, commit):
    T = len(tokens)
    valid = torch.ones(1, start + T, dtype=torch.bool)
    mask = masks.decode_mask(valid, start, T, causal)
    logits = forward(model, torch.tensor([tokens]), torch.arange(start, start + T)[None], mask,
                     cache)
    if commit:
        cache.commit(T)
    return logits


def test_commits_equal_causal_forward_and_peeks_leave_no_trace():
    model = tiny_model("qwen3")
    tokens = random_prompts([23], seed=1)[0]
    with torch.no_grad():
        cache = KVCache.for_model(model, 1, 40)
        run_chunk(model, cache, tokens[:7], 0, True, True)  # prefill
        pos = 7
        for size in (4, 4, 1, 5, 2):
            block = tokens[pos:pos + size]
            noisy = [block[0]] + [MASK] * (size - 1)
            run_chunk(model, cache, noisy, pos, False, False)  # peek: not stored
            assert cache.length == pos
            run_chunk(model, cache, block, pos, True, True)  # commit
            pos += size
        want = hf_causal_kv(model, tokens)
        assert cache.length == len(tokens)
        for layer, (k, v) in enumerate(want):
            got_k, got_v = cache.stored(layer)
            torch.testing.assert_close(got_k, k, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got_v, v, atol=1e-5, rtol=1e-5)


def test_cached_logits_equal_uncached_forward():
    model = tiny_model("llama")
    tokens = random_prompts([15], seed=2)[0]
    with torch.no_grad():
        full = model(torch.tensor([tokens])).logits[0]
        cache = KVCache.for_model(model, 1, 15)
        run_chunk(model, cache, tokens[:9], 0, True, True)
        tail = run_chunk(model, cache, tokens[9:], 9, True, True)[0]
    torch.testing.assert_close(tail, full[9:], atol=1e-5, rtol=1e-5)


def test_truncate_and_keep_rows():
    cache = KVCache(n_layers=1, batch=3, n_kv_heads=1, head_dim=2, max_len=8)
    k = torch.arange(3 * 5 * 2, dtype=torch.float32).view(3, 1, 5, 2)
    cache.write(0, k, k)
    cache.commit(5)
    cache.truncate(3)
    assert cache.length == 3
    cache.keep_rows(torch.tensor([0, 2]))
    got_k, _ = cache.stored(0)
    assert torch.equal(got_k, k[[0, 2], :, :3])
    try:
        cache.truncate(4)
    except ValueError:
        pass
    else:
        raise AssertionError("truncating beyond the stored length must fail")


def test_rows_leave_and_join_in_place():
    """Continuous batching: a row's slot is refilled by a later row and a joining row takes
    a spare slot, without reallocating the buffers; stored contents follow their rows."""
    cache = KVCache(n_layers=2, batch=4, n_kv_heads=1, head_dim=2, max_len=8)
    k = torch.randn(4, 1, 6, 2)
    for layer in range(2):
        cache.write(layer, k, -k)
    cache.commit(6)
    ptr = cache.k.data_ptr()
    cache.keep_rows(torch.tensor([0, 3, 2]))  # row 1 left, row 3 took its place
    for layer in range(2):
        got_k, got_v = cache.stored(layer)
        assert torch.equal(got_k, k[[0, 3, 2]]) and torch.equal(got_v, -k[[0, 3, 2]])
    cache.add_rows(1)
    assert cache.k.shape[1] == 4 and cache.k.data_ptr() == ptr  # the spare slot, no copy
    assert cache.k[0].is_contiguous()  # each layer is one block (the engine's layout)
    cache.k[:, 3, :, :6] = 7.0
    assert torch.equal(cache.stored(1)[0][:3], k[[0, 3, 2]])
    cache.add_rows(3)  # beyond the spare rows: new buffers, the stored part carried over
    assert cache.k.shape[1] == 7 and torch.equal(cache.stored(0)[0][:3], k[[0, 3, 2]])
    cache.keep_rows(torch.tensor([2, 0]), drop_front=2)  # leading columns dropped as well
    assert cache.length == 4 and torch.equal(cache.stored(0)[0], k[[2, 0], :, 2:])


def test_memory_per_token_is_what_the_architecture_needs():
    """Per position, the cache costs what transformers' own KV cache costs for the same
    model (keys and values of the KV heads only, under GQA), and its buffers hold
    nothing else."""
    model = tiny_model("qwen3")  # 4 query heads, 2 KV heads
    T = 9
    hf = hf_causal_kv(model, list(range(3, 3 + T)))
    hf_per_token = sum(k.nbytes + v.nbytes for k, v in hf) / T
    cache = KVCache.for_model(model, batch=1, max_len=50)
    assert cache.bytes_per_token == hf_per_token
    assert cache.k.nbytes + cache.v.nbytes == cache.bytes_per_token * cache.max_len
    assert KVCache.for_model(model, batch=3, max_len=5).bytes_per_token == 3 * hf_per_token
