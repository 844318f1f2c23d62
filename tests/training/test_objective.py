"""Train/inference consistency of the [noisy | clean] forward, the noising rules, and the
loss going down on a tiny model."""

import pytest
import torch

from nextblock import masks
from nextblock.cache import KVCache
from nextblock.errors import ConfigError
from nextblock.modeling import forward
from nextblock.training.curriculum import BlockCurriculum
from nextblock.training.objective import (ObjectiveSettings, noise, objective,
                                          training_logits)
from tests.helpers import MASK, random_prompts, tiny_model


def batch_of(L=24, B=2, seed=0):
    return torch.tensor(random_prompts([L] * B, seed=seed))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_clean_half_equals_plain_causal_forward(family):
    model = tiny_model(family)
    x = batch_of()
    nb = noise(x, 4, MASK, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, clean = training_logits(model, nb)
        ref = model(x).logits
    torch.testing.assert_close(clean, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block_causal", [False, True])
@pytest.mark.parametrize("b,off", [(2, 0), (4, 0), (8, 0), (4, 7), (8, 3)])
def test_noisy_block_equals_inference_denoise_step(b, off, block_causal):
    """off: the block grid starts at a response after an `off`-token prompt (SFT).
    block_causal: the clean prefix is committed as such a model's decoding stores it, the
    prompt causally, then each response block whole."""
    model = tiny_model("qwen2", seed=1)
    L = 24
    x = batch_of(L, B=1, seed=3)
    offsets = torch.tensor([off])
    nb = noise(x, b, MASK, generator=torch.Generator().manual_seed(1), offsets=offsets,
               loss_mask=(torch.arange(L) >= off)[None])
    assert nb.masked.any() and not nb.masked[0, :off + 1].any()
    s = ObjectiveSettings(ar_weight=0.0, training_mask="block_causal" if block_causal
                          else "context_causal")
    with torch.no_grad():
        noisy, _ = training_logits(model, nb, settings=s)
        for k in range((L - off) // b):
            start = off + k * b
            cache = KVCache.for_model(model, 1, L)
            valid = torch.ones(1, L, dtype=torch.bool)
            pieces = [(0, start)] if not block_causal else (
                [(0, off)] * (off > 0) + [(off + j * b, b) for j in range(k)])
            for c0, n in [p for p in pieces if p[1]]:  # the clean prefix, committed
                commit = n if block_causal and c0 >= off else 0
                forward(model, x[:, c0:c0 + n], torch.arange(c0, c0 + n)[None],
                        masks.decode_mask(valid[:, :c0 + n], c0, n, True, commit_len=commit),
                        cache)
                cache.commit(n)
            step = forward(model, nb.noisy[:, start:start + b],
                           torch.arange(start, start + b)[None],
                           masks.decode_mask(valid[:, :start + b], start, b, False), cache)
            torch.testing.assert_close(noisy[:, start:start + b], step, atol=1e-5, rtol=1e-5)


def test_block_causal_needs_no_ar_loss():
    with pytest.raises(ConfigError, match="ar_weight"):
        ObjectiveSettings(training_mask="block_causal")
    with pytest.raises(ConfigError, match="training_mask"):
        ObjectiveSettings(training_mask="causal")


def test_padded_rows_equal_unpadded():
    model = tiny_model("llama")
    x = batch_of(16, B=2, seed=4)
    lengths = torch.tensor([16, 11])
    nb = noise(x, 4, MASK, lengths=lengths, generator=torch.Generator().manual_seed(2))
    assert not nb.masked[1, 11:].any()
    with torch.no_grad():
        noisy, clean = training_logits(model, nb)
        short = noise(x[1:, :11], 4, MASK)
        short.noisy = nb.noisy[1:, :11]
        n2, c2 = training_logits(model, short)
    torch.testing.assert_close(noisy[1, :11], n2[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clean[1, :11], c2[0], atol=1e-5, rtol=1e-5)


def test_noising_rules():
    x = batch_of(64, B=64, seed=5)
    g = torch.Generator().manual_seed(3)
    nb = noise(x, 8, MASK, generator=g)
    assert not nb.masked[:, ::8].any()  # anchors are never masked
    assert torch.equal(nb.noisy[nb.masked], torch.full_like(nb.noisy[nb.masked], MASK))
    assert torch.equal(nb.noisy[~nb.masked], x[~nb.masked])
    # per block: one t per block, and about a t fraction of its non-anchors masked
    t_blocks = nb.t[:, ::8]
    assert torch.equal(nb.t, t_blocks.repeat_interleave(8, dim=1))
    rate = nb.masked.view(64, 8, 8)[:, :, 1:].float().mean(-1)
    assert abs(float((rate - t_blocks).mean())) < 0.03
    seq = noise(x, 8, MASK, ObjectiveSettings(mask_schedule="sequence"), generator=g)
    assert (seq.t == seq.t[:, :1]).all()
    comp = noise(x, 8, MASK, ObjectiveSettings(complementary=True), generator=g)
    n = x.shape[0]
    assert torch.equal(comp.masked[:n] ^ comp.masked[n:], (torch.arange(64) % 8 != 0).expand(n, 64))
    assert comp.ar_rows.tolist() == [True] * n + [False] * n


def test_block_size_one_is_plain_ar_training():
    model = tiny_model("llama")
    x = batch_of()
    out = objective(model, noise(x, 1, MASK), ObjectiveSettings(ar_weight=0.5))
    ref = torch.nn.functional.cross_entropy(model(x).logits[:, :-1].reshape(-1, 96),
                                            x[:, 1:].reshape(-1))
    assert out.n_masked == 0 and float(out.mdm_loss) == 0.0
    torch.testing.assert_close(out.loss, 0.5 * ref)


def _train(block_size_at, steps=40, seed=0):
    """A few dozen Adam steps on a small repeating corpus; returns (first, last) losses."""
    model = tiny_model("llama", seed=seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pattern = torch.tensor(random_prompts([8], seed=6)[0])
    data = pattern.repeat(4, 4)  # [4, 32]: easy, structured text
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        out = objective(model, noise(data, block_size_at(step), MASK, generator=g))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append((out.loss.item(), out.mdm_loss.item(), out.ar_loss.item()))
    return losses


@pytest.mark.parametrize("schedule", ["b1", "b4", "curriculum"])
def test_loss_goes_down(schedule):
    cur = BlockCurriculum(b0=1, r=2, b_max=4, D=10)
    block = {"b1": lambda s: 1, "b4": lambda s: 4, "curriculum": cur.block_size}[schedule]
    losses = _train(block)
    first = sum(l[2] for l in losses[:5]) / 5
    last = sum(l[2] for l in losses[-5:]) / 5
    assert last < 0.5 * first  # the AR term learns the pattern
    if schedule != "b1":  # the MDM term learns too (from its first non-empty steps)
        mdm = [l[1] for l in losses if l[1] > 0]
        assert sum(mdm[-5:]) / 5 < 0.7 * sum(mdm[:5]) / 5
    else:
        assert all(l[1] == 0.0 for l in losses)


def test_gradient_checkpointing_gives_the_same_gradients():
    x = batch_of(16, B=2, seed=8)
    grads = []
    for ckpt in (False, True):
        model = tiny_model("llama", seed=2).train()
        nb = noise(x, 4, MASK, generator=torch.Generator().manual_seed(5))
        objective(model, nb, checkpoint=ckpt).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()
                                if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("inverse_t", [False, True])
def test_chunked_loss_equals_whole_loss(inverse_t):
    """The LM head + cross-entropy taken a few positions at a time (checkpointed) gives the
    loss, accuracy count and gradients of one pass over all positions."""
    x = batch_of(24, B=2, seed=4)
    outs, grads = [], []
    for chunk in (10**6, 5):
        model = tiny_model("llama", seed=2).train()
        nb = noise(x, 4, MASK, generator=torch.Generator().manual_seed(1))
        s = ObjectiveSettings(loss_chunk=chunk, inverse_t_weight=inverse_t)
        out = objective(model, nb, s)
        out.loss.backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()
                                if p.grad is not None]))
    assert outs[0].n_masked > 5 and outs[0].n_correct == outs[1].n_correct
    torch.testing.assert_close(outs[0].loss, outs[1].loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("b,docs", [(4, False), (1, False), (4, True), (8, True)])
def test_chunked_attention_equals_dense(b, docs):
    """The long-sequence path (query chunks, no 2L x 2L mask) gives the same loss and
    gradients as the dense mask."""
    model = tiny_model("llama", seed=2)
    L = 40
    x = batch_of(L, B=2, seed=6)
    kw = dict(lengths=torch.tensor([L, 29]), generator=torch.Generator().manual_seed(4))
    if docs:
        kw["docs"] = torch.tensor([[0] * 9 + [1] * 20 + [2] * 11, [0] * 25 + [1] * 15])
    nb = noise(x, b, MASK, **kw)
    results = []
    for attention in ("dense", "chunked"):
        model.zero_grad()
        s = ObjectiveSettings(attention=attention, attention_chunk=7)
        out = objective(model, nb, s)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((out.loss.detach(), out.n_correct, grads))
    (l1, c1, g1), (l2, c2, g2) = results
    torch.testing.assert_close(l2, l1, atol=1e-5, rtol=1e-5)
    assert c1 == c2 and len(g1) == len(g2) > 0
    for a, g in zip(g1, g2):
        torch.testing.assert_close(g, a, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["dense", "chunked"])
def test_packed_documents_do_not_see_each_other(attention):
    """A document packed after another gives the logits it gives alone (both halves):
    no attention across the boundary, positions and block grid restart at its start."""
    model = tiny_model("qwen3", seed=3)
    first, second = batch_of(11, B=1, seed=7), batch_of(17, B=1, seed=8)
    packed = torch.cat([first, second], dim=1)
    docs = torch.tensor([[0] * 11 + [1] * 17])
    nb = noise(packed, 4, MASK, docs=docs, generator=torch.Generator().manual_seed(5))
    assert not nb.masked[0, [0, 4, 8, 11, 15, 19, 23]].any()  # anchors of both grids
    assert torch.equal(nb.positions[0, 11:], torch.arange(17))
    alone = noise(second, 4, MASK)
    alone.noisy, alone.masked = nb.noisy[:, 11:], nb.masked[:, 11:]
    s = ObjectiveSettings(attention=attention, attention_chunk=5)
    with torch.no_grad():
        noisy, clean = training_logits(model, nb, settings=s)
        n2, c2 = training_logits(model, alone, settings=s)
    torch.testing.assert_close(noisy[:, 11:], n2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clean[:, 11:], c2, atol=1e-5, rtol=1e-5)
