"""The int8 engine: rows independent of the pass bit for bit, verified == AR with it, close
to float32, the GEMM equal to the quantised arithmetic written in torch, and the load rules."""

import pytest
import torch

import nextblock
from nextblock.cache import KVCache
from nextblock.config import DecodeSettings
from nextblock.decoding.loop import run
from nextblock.engine.int8 import GROUP, Int8Engine, as_ptr, quantize_groups
from nextblock.modeling import forward
from tests.helpers import MASK, random_prompts, save_tiny, tiny_model

FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]


def _engine_model(family, seed=0, **kw):
    model = tiny_model(family, seed=seed, **kw)
    model.nextblock_engine = Int8Engine(model)
    return model


def _causal(T, K):
    return torch.ones(T, K, dtype=torch.bool).tril(K - T)[None, None]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pass_of_T_tokens_equals_T_one_token_passes_bit_for_bit(family):
    model = _engine_model(family)
    ids = torch.tensor(random_prompts([11, 11], seed=3))
    pos = torch.arange(11)[None].repeat(2, 1)
    whole = KVCache.for_model(model, 2, 16)
    with torch.no_grad():
        ctx = forward(model, ids[:, :4], pos[:, :4], _causal(4, 4).repeat(2, 1, 1, 1), whole)
        whole.commit(4)
        block = forward(model, ids[:, 4:], pos[:, 4:], _causal(7, 11).repeat(2, 1, 1, 1), whole)
        one = KVCache.for_model(model, 2, 16)
        forward(model, ids[:, :4], pos[:, :4], _causal(4, 4).repeat(2, 1, 1, 1), one)
        one.commit(4)
        steps = []
        for t in range(4, 11):
            steps.append(forward(model, ids[:, t:t + 1], pos[:, t:t + 1],
                                 torch.ones(2, 1, 1, t + 1, dtype=torch.bool), one))
            one.commit(1)
        alone = [forward(model, ids[r:r + 1], pos[r:r + 1], _causal(11, 11)) for r in range(2)]
        both = forward(model, ids, pos, _causal(11, 11).repeat(2, 1, 1, 1))
    assert torch.equal(torch.cat(steps, dim=1), block)
    assert torch.equal(whole.k[:, :, :, :11], one.k[:, :, :, :11])  # the cache too
    for r in range(2):  # a row does not depend on the other rows of the batch
        assert torch.equal(both[r], alone[r][0])


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_is_close_to_float32(family):
    ref = tiny_model(family, seed=1)
    model = _engine_model(family, seed=1)
    ids = torch.tensor(random_prompts([12], seed=1))
    pos, mask = torch.arange(12)[None], _causal(12, 12)
    with torch.no_grad():
        a = forward(ref, ids, pos, mask)
        b = forward(model, ids, pos, mask)
        hidden = forward(model, ids, pos, mask, logits_from=5, hidden=True)
    assert ((a - b).norm() / a.norm()) < 0.03
    assert hidden.shape == (1, 7, ref.config.hidden_size)
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


@pytest.mark.parametrize("portable", [False, True])
def test_gemm_equals_the_quantised_arithmetic(portable):
    torch.manual_seed(0)
    lin = torch.nn.Linear(2 * GROUP, 96)
    model = tiny_model("llama")
    eng = Int8Engine(model, portable=portable)
    ql, _ = eng._linear([lin])
    x = torch.randn(7, 2 * GROUP)
    x[3] *= 40  # an outlier row changes no other row
    y = _apply(eng, ql, x)
    ref = _gemm_reference(x, lin.weight.detach(), lin.bias.detach())
    assert torch.allclose(y[:, :96].double(), ref, rtol=1e-5, atol=1e-5)
    assert ((y[:, :96] - lin(x).detach()).norm(dim=1) / lin(x).detach().norm(dim=1)).max() < 0.02


def test_portable_and_vnni_builds_give_the_same_products():
    from nextblock.engine.build import compile_flags

    if "-mavx512vnni" not in compile_flags():
        pytest.skip("this CPU has no AVX-512 VNNI: only the portable build exists")
    torch.manual_seed(1)
    lin = torch.nn.Linear(3 * GROUP, 64, bias=False)
    x = torch.randn(5, 3 * GROUP)
    outs = []
    for portable in (False, True):
        eng = Int8Engine(tiny_model("llama"), portable=portable)
        ql, _ = eng._linear([lin])
        outs.append(_apply(eng, ql, x))
    assert torch.equal(outs[0], outs[1])


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
        assert ver.tokens == ar.tokens, kw
        for p, toks in zip(prompts, ar.tokens):  # batch == single
            assert run(model, [p], s, mask_token_id=MASK).tokens == [toks]


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
