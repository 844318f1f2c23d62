"""Mixed-phase block decoding (decoding/mixed.py): in a batch, each row gets exactly the
tokens of its own batch-1 run and makes exactly its batch-1 forwards (no fused commit),
whatever the other rows do: their budgets, stop tokens, joins and cancellations."""

import pytest
import torch

from nextblock.config import DecodeSettings
from nextblock.decoding.engine import Engine, run
from nextblock.decoding.events import Request, Step
from tests.helpers import MASK, peaked_model, random_prompts

MODES = [dict(threshold=0.6), dict(threshold=0.3, temperature=0.9, seed=3),
         dict(threshold=0.5, sub_block=2), dict(threshold=0.5, repetition_penalty=1.3)]


def alone(model, req, s):
    """The row decoded by itself (lockstep strategy, no fused commit): tokens, forwards."""
    g = run(model, [req.prompt], s, mask_token_id=MASK, max_new=[req.max_new_tokens],
            seeds=[req.seed], stop_token_ids=[5])
    return g.all_tokens[0], g.forwards


def batched(model, reqs, s, max_batch, late=()):
    """Rows through one engine in mixed phases; `late` rows are submitted after 3 steps."""
    eng = Engine(model, s, mask_token_id=MASK, stop_token_ids=[5], max_batch=max_batch)
    for r in reqs:
        eng.submit(r)
    kinds, k = set(), 0
    with torch.inference_mode():
        while eng.busy or (late and k <= 3):
            if k == 3:
                for r in late:
                    eng.submit(r)
            kinds |= {ev.kind for ev in eng.step() if isinstance(ev, Step)}
            k += 1
    return dict(eng.finished()), kinds


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("kw", MODES)
def test_each_row_gets_its_tokens_and_forwards_alone(family, kw):
    model = peaked_model(family, seed=7)
    s = DecodeSettings(mode="block", block_size=4, max_new_tokens=30, fused_commit=False,
                       **kw).validated()
    prompts = random_prompts([5, 11, 3, 8, 6], seed=5)
    budgets, seeds = [30, 13, 22, 9, 30], [s.seed, 4, s.seed, 9, 1]
    reqs = [Request(i, p, budgets[i], seeds[i]) for i, p in enumerate(prompts)]
    out, kinds = batched(model, reqs[:4], s, max_batch=3, late=reqs[4:])
    assert "mixed" in kinds and "denoise" not in kinds
    for r in reqs:
        toks, forwards = alone(model, r, s)
        assert out[r.id].tokens == toks, r.id
        assert out[r.id].forwards == forwards, r.id


def test_a_block_causal_model_in_mixed_phases():
    model = peaked_model("llama", seed=3)
    model.nextblock_attention = "block_causal"
    try:
        s = DecodeSettings(mode="block", block_size=4, threshold=0.5, max_new_tokens=18,
                           fused_commit=False).validated()
        reqs = [Request(i, p, 18 - 2 * i, None) for i, p in
                enumerate(random_prompts([4, 9, 6], seed=2))]
        out, _ = batched(model, reqs, s, max_batch=3)
        for r in reqs:
            assert out[r.id].tokens == alone(model, r, s)[0]
    finally:
        del model.nextblock_attention


def test_mixed_phases_make_fewer_forwards_than_lockstep():
    """The point of it: a row no longer waits for the batch's slowest denoising."""
    model = peaked_model("qwen2", seed=4)
    s = DecodeSettings(mode="block", block_size=4, threshold=0.5, max_new_tokens=24,
                       fused_commit=False).validated()
    prompts = random_prompts([6, 4, 9, 5], seed=3)
    reqs = [Request(i, p, 24) for i, p in enumerate(prompts)]
    mixed, _ = batched(model, reqs, s, max_batch=4)
    lock = run(model, prompts, s, mask_token_id=MASK, stop_token_ids=[5])  # lockstep batch
    assert [mixed[i].tokens for i in range(4)] == lock.all_tokens
    per_row_mixed = sum(g.forwards for g in mixed.values())
    assert per_row_mixed < 4 * lock.forwards


def test_cancel_and_stop_in_mixed_phases():
    model = peaked_model("llama", seed=9)
    s = DecodeSettings(mode="block", block_size=4, threshold=0.4, max_new_tokens=40,
                       fused_commit=False).validated()
    prompts = random_prompts([7, 5, 6], seed=11)
    eng = Engine(model, s, mask_token_id=MASK, stop_token_ids=[5], max_batch=3)
    for i, p in enumerate(prompts):
        eng.submit(Request(i, p, 40))
    with torch.inference_mode():
        for _ in range(5):
            eng.step()
        eng.cancel(1)
        while eng.busy:
            eng.step()
    out = dict(eng.finished())
    assert out[1].completions[0].finish_reason == "cancelled"
    got = out[1].tokens
    assert got == alone(model, Request(1, prompts[1], 40), s)[0][:len(got)]
    for i in (0, 2):
        assert out[i].tokens == alone(model, Request(i, prompts[i], 40), s)[0]
