"""The int8 engine: rows independent of the pass bit for bit, verified == AR with it, close
to float32, the GEMM equal to the quantised arithmetic written in torch, and the load rules."""

import pytest
import torch

import nextblock
from nextblock.cache import KVCache
from nextblock.config import DecodeSettings
from nextblock.decoding.engine import run
from nextblock.engine.int8 import GROUP, Int8Engine, as_ptr, quantize_groups
from nextblock.modeling import forward
from tests.helpers import MASK, random_prompts, save_tiny, tiny_model

FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]
# head sizes 8 (the scalar attention), 64 and 128 (the AVX-512 kernels, 16 keys a step);
# 2 or 3 query heads per key/value head (attention work items hold a GQA group's queries:
# value passes in groups of 1 to 4 queries)
SHAPES = [(f, {}) for f in FAMILIES] + [
    ("llama", dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1)),
    ("qwen3", dict(head_dim=128)),
    ("llama", dict(hidden_size=192, num_attention_heads=3, num_key_value_heads=1))]


def _isas():
    """The kernels this CPU can run, portable C first (the reference of the bit test)."""
    from nextblock.engine.build import runnable_isas

    return runnable_isas()[::-1]


def _engine_model(family, seed=0, isa=None, **kw):
    model = tiny_model(family, seed=seed, **kw)
    model.nextblock_engine = Int8Engine(model, isa=isa)
    return model


def _causal(T, K):
    return torch.ones(T, K, dtype=torch.bool).tril(K - T)[None, None]


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("family,shape", SHAPES)
def test_a_pass_of_T_tokens_equals_T_one_token_passes_bit_for_bit(family, shape, isa):
    model = _engine_model(family, isa=isa, **shape)
    n, c = 37, 19  # keys span whole and partial 16-key steps
    ids = torch.tensor(random_prompts([n, n], seed=3))
    pos = torch.arange(n)[None].repeat(2, 1)
    whole = KVCache.for_model(model, 2, 48)
    with torch.no_grad():
        ctx = forward(model, ids[:, :c], pos[:, :c], _causal(c, c).repeat(2, 1, 1, 1), whole)
        whole.commit(c)
        block = forward(model, ids[:, c:], pos[:, c:], _causal(n - c, n).repeat(2, 1, 1, 1),
                        whole)
        one = KVCache.for_model(model, 2, 48)
        forward(model, ids[:, :c], pos[:, :c], _causal(c, c).repeat(2, 1, 1, 1), one)
        one.commit(c)
        steps = []
        for t in range(c, n):
            steps.append(forward(model, ids[:, t:t + 1], pos[:, t:t + 1],
                                 torch.ones(2, 1, 1, t + 1, dtype=torch.bool), one))
            one.commit(1)
        alone = [forward(model, ids[r:r + 1], pos[r:r + 1], _causal(n, n)) for r in range(2)]
        both = forward(model, ids, pos, _causal(n, n).repeat(2, 1, 1, 1))
    assert torch.equal(torch.cat(steps, dim=1), block)
    assert torch.equal(whole.k[:, :, :, :n], one.k[:, :, :, :n])  # the cache too
    for r in range(2):  # a row does not depend on the other rows of the batch
        assert torch.equal(both[r], alone[r][0])


@pytest.mark.parametrize("family,shape", SHAPES)
def test_engine_is_close_to_float32(family, shape):
    ref = tiny_model(family, seed=1, **shape)
    model = _engine_model(family, seed=1, **shape)
    ids = torch.tensor(random_prompts([40], seed=1))
    pos, mask = torch.arange(40)[None], _causal(40, 40)
    mask = mask & (torch.rand(40) > 0.3)[None, None, None] | torch.eye(40, dtype=torch.bool)
    with torch.no_grad():
        a = forward(ref, ids, pos, mask)
        b = forward(model, ids, pos, mask)
        hidden = forward(model, ids, pos, mask, logits_from=5, hidden=True)
    assert ((a - b).norm() / a.norm()) < 0.03
    assert hidden.shape == (1, 35, ref.config.hidden_size)
    with torch.enable_grad():  # training forwards never use the engine
        assert torch.equal(forward(model, ids, pos, mask), forward(ref, ids, pos, mask))


def _gemm_reference(x, w, bias):
    """The engine's arithmetic in torch: int8 groups, int32 sums, groups summed in order."""
    qw, sw = quantize_groups(w)
    xs = x.view(x.shape[0], -1, GROUP)
    sx = xs.abs().amax(dim=2) / 127
    qx = torch.where(sx[..., None] > 0, xs * (127 / xs.abs().amax(2, keepdim=True)), 0.0).round()
    ints = torch.einsum("mgk,ngk->mng", qx.double(), qw.view(w.shape[0], -1, GROUP).double())
    return (ints * sw[None].double() * sx[:, None].double()).sum(-1) + bias.double()


def _apply(eng, ql, x):
    """One packed linear through the C GEMM (activations quantised per row and group)."""
    from ctypes import byref, c_int

    M = x.shape[0]
    q, sx, y = torch.empty(M * ql.k, dtype=torch.uint8), torch.empty(M * ql.k), torch.empty(M, ql.n)
    eng.lib.nb_linear(byref(ql), as_ptr(x), c_int(M), c_int(x.shape[1]), as_ptr(q), as_ptr(sx),
                      as_ptr(y))
    return y


@pytest.mark.parametrize("isa", _isas())
def test_gemm_equals_the_quantised_arithmetic(isa):
    torch.manual_seed(0)
    lin = torch.nn.Linear(2 * GROUP, 96)
    model = tiny_model("llama")
    eng = Int8Engine(model, isa=isa)
    assert eng.isa == isa
    ql, _ = eng._linear([lin])
    x = torch.randn(11, 2 * GROUP)  # 11 rows: full and partial row tiles of every kernel
    x[3] *= 40  # an outlier row changes no other row
    y = _apply(eng, ql, x)
    ref = _gemm_reference(x, lin.weight.detach(), lin.bias.detach())
    assert torch.allclose(y[:, :96].double(), ref, rtol=1e-5, atol=1e-5)
    assert ((y[:, :96] - lin(x).detach()).norm(dim=1) / lin(x).detach().norm(dim=1)).max() < 0.02


def test_every_kernel_set_gives_the_same_products():
    """The SIMD kernels sum the same int32 products as the portable C (AVX-512 with the +128
    offset and comp, AVX2 with signed bytes and the sign trick) and share its epilogue, so a
    GEMM gives the same bits on every CPU; large activations and weights check that the
    AVX2 byte products never saturate."""
    isas = _isas()
    if len(isas) == 1:
        pytest.skip("this CPU has neither AVX2 nor AVX-512 VNNI: only the portable build exists")
    torch.manual_seed(1)
    lin = torch.nn.Linear(3 * GROUP, 64, bias=False)
    with torch.no_grad():
        lin.weight[:, ::2] = lin.weight[:, ::2].abs().clamp_min(0.05) * 10  # full-scale pairs
    x = torch.randn(9, 3 * GROUP)
    x[:, ::2] = x[:, ::2].abs() * 10
    outs = []
    for isa in isas:
        eng = Int8Engine(tiny_model("llama"), isa=isa)
        ql, _ = eng._linear([lin])
        outs.append(_apply(eng, ql, x))
    for isa, out in zip(isas[1:], outs[1:]):
        assert torch.equal(out, outs[0]), isa


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_verified_equals_ar_with_the_engine(family):
    model = _engine_model(family, seed=2)
    prompts = random_prompts([5, 9, 3], seed=4)
    ar = run(model, prompts, DecodeSettings(mode="ar", max_new_tokens=20).validated(),
             mask_token_id=MASK)
    for kw in (dict(block_size=4, threshold=0.0), dict(block_size=3, threshold=0.0,
                                                       fused_commit=False)):
        s = DecodeSettings(mode="verified", max_new_tokens=20, **kw).validated()
        ver = run(model, prompts, s, mask_token_id=MASK)
        assert ver.all_tokens == ar.all_tokens, kw
        for p, toks in zip(prompts, ar.all_tokens):  # batch == single
            assert run(model, [p], s, mask_token_id=MASK).all_tokens == [toks]


def test_load_attaches_the_engine_by_default(tmp_path):
    path = save_tiny(tmp_path / "tiny")
    lm = nextblock.load(path)
    assert lm.quantization == "int8" and hasattr(lm.model, "nextblock_engine")
    ref = nextblock.load(path, dtype="float32")
    assert ref.quantization is None and not hasattr(ref.model, "nextblock_engine")
    assert nextblock.load(path, quantize="int8").quantization == "int8"
    assert lm.generate("w1 w2", chat=False, max_new_tokens=4, mode="ar").tokens
    lm.save(tmp_path / "out")  # the float weights are saved: the engine is a runtime copy
    assert not hasattr(nextblock.load(tmp_path / "out", dtype="float32").model,
                       "nextblock_engine")
    with pytest.raises(nextblock.ConfigError, match="quantize"):
        nextblock.load(path, quantize="int4")
    with pytest.raises(nextblock.ConfigError, match="dtype"):
        nextblock.load(path, dtype="int4")
    with pytest.raises(nextblock.ConfigError, match="float32"):
        nextblock.load(path, quantize="int8", dtype="bfloat16")


def test_the_engine_refuses_what_it_cannot_run():
    from nextblock.engine.int8 import MAX_GQA, unsupported_reason

    assert unsupported_reason(tiny_model("llama")) is None
    wide = tiny_model("llama", hidden_size=2 * (MAX_GQA + 1), num_attention_heads=MAX_GQA + 1,
                      num_key_value_heads=1)
    assert "key/value heads" in unsupported_reason(wide)
    assert "silu" in unsupported_reason(tiny_model("llama", hidden_act="gelu"))


@pytest.mark.parametrize("family,shape", SHAPES[3:])
def test_masked_columns_between_keys_change_no_bit(family, shape):
    """Verified decoding in a batch leaves holes (rejected drafts) between a row's keys where
    the same row alone has none: the outputs must not depend on where the keys sit."""
    model = _engine_model(family, **shape)
    n, holes = 30, {3, 7, 8, 20, 21, 22, 25, 40}
    ids = random_prompts([n], seed=3)[0]
    toks, pos, valid, i = [], [], [], 0
    for c in range(n + len(holes)):
        hole = c in holes or i == n
        toks.append(5 if hole else ids[i])
        pos.append(0 if hole else i)
        valid.append(not hole)
        i += not hole
    v = torch.tensor(valid)
    L = len(toks)

    def mask(m, keys):
        return ((torch.ones(m, m, dtype=torch.bool).tril() & keys) | torch.eye(m, dtype=torch.bool))[None, None]

    with torch.no_grad():
        spread = forward(model, torch.tensor([toks]), torch.tensor([pos]), mask(L, v))
        packed = forward(model, torch.tensor([ids]), torch.arange(n)[None],
                         mask(n, torch.ones(n, dtype=torch.bool)))
    assert torch.equal(spread[0, v], packed[0])


def test_the_c_argmax_is_torchs_with_the_mask_left_out():
    """Greedy choices go through the engine's argmax: the same index as torch.argmax (the
    first largest, ties included) over rows whose largest may be the excluded column."""
    eng = _engine_model("llama").nextblock_engine
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 1000, generator=g)
    x[0, 0, [7, 400, 999]] = 9.0  # a three-way tie: the first wins
    x[1, :, 13] = 50.0  # the excluded column is the largest everywhere in row 1
    x[2, 2, :] = -1.0  # a flat row: index 0
    want = x.index_fill(-1, torch.tensor([13]), -torch.inf).argmax(-1)
    assert torch.equal(eng.argmax(x, 13), want)
    assert torch.equal(eng.argmax(x[:, 1:4]), x[:, 1:4].argmax(-1))  # a strided view
    wide = x[..., :997]  # rows of a wider buffer (the head's padded logits), read in place
    assert torch.equal(eng.argmax(wide, 13), wide.index_fill(-1, torch.tensor([13]),
                                                             -torch.inf).argmax(-1))
    assert torch.equal(eng.argmax(x[:, :, ::2]), x[:, :, ::2].argmax(-1))  # not unit stride
    assert torch.equal(eng.argmax(x[:1, :1].expand(2, 3, -1)), torch.full((2, 3), 7))
    assert eng.argmax(x, 13)[0, 0] == 7
