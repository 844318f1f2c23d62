"""Continuous batching: rows with their own budgets, rows joining a running batch between
commits and rows cancelled mid-way; every row still gets exactly its single-run output."""

import pytest
import torch

from nextblock.config import DecodeSettings
from nextblock.decoding.engine import run
from nextblock.decoding.loop import Emit, Request, decode
from tests.helpers import MASK, peaked_model, random_prompts

MODES = [dict(mode="ar"), dict(mode="block", block_size=4, threshold=0.6),
         dict(mode="block", block_size=4, threshold=0.3, temperature=0.9, seed=3),
         dict(mode="verified", block_size=4, threshold=0.0)]


def single(model, prompt, kw, n, seed=None):
    s = DecodeSettings(max_new_tokens=n, **kw).validated()
    return run(model, [prompt], s, mask_token_id=MASK,
               seeds=[seed if seed is not None else s.seed]).all_tokens[0]


def collect(events):
    out, reasons = {}, {}
    with torch.inference_mode():
        for ev in events:
            if isinstance(ev, Emit):
                for r, toks in ev.tokens.items():
                    out.setdefault(r, []).extend(toks)
                reasons.update(ev.finished)
    return out, reasons


@pytest.mark.parametrize("kw", MODES)
def test_rows_with_their_own_budgets(kw):
    model = peaked_model("llama", seed=5)
    prompts = random_prompts([4, 9, 6], seed=3)
    budgets = [5, 13, 9]
    s = DecodeSettings(max_new_tokens=99, **kw).validated()
    out, reasons = collect(decode(model, prompts, s, mask_token_id=MASK, max_new=budgets))
    for i, (p, n) in enumerate(zip(prompts, budgets)):
        assert out[i] == single(model, p, kw, n), i
        assert reasons[i] == "length"


@pytest.mark.parametrize("kw", MODES)
def test_rows_join_and_leave_a_running_batch(kw):
    model = peaked_model("qwen2", seed=6)
    prompts = random_prompts([5, 3, 14, 8, 2], seed=4)
    s = DecodeSettings(max_new_tokens=16, **kw).validated()
    calls = {"n": 0}

    def admit():
        calls["n"] += 1
        if calls["n"] == 2:  # a longer prompt than the batch's: the batch gets left padding
            return [Request(2, prompts[2], 11, seed=7),
                    Request(3, prompts[3], 16, seed=s.seed)], set()
        if calls["n"] == 3:
            return [Request(4, prompts[4], 6, seed=s.seed)], {1}  # row 1 is cancelled
        return [], set()

    out, reasons = collect(decode(model, prompts[:2], s, mask_token_id=MASK, admit=admit))
    assert out[0] == single(model, prompts[0], kw, 16)
    assert out[2] == single(model, prompts[2], kw, 11, seed=7)
    assert out[3] == single(model, prompts[3], kw, 16)
    assert out[4] == single(model, prompts[4], kw, 6)
    assert reasons[1] == "cancelled" and len(out.get(1, [])) < 16
    assert out.get(1, []) == single(model, prompts[1], kw, 16)[:len(out.get(1, []))]
