"""The batching engine (decoding/engine.py): rows submitted at any time, `max_batch` at a
time, cancelled queued or running, each get exactly the output of their own single run;
per-row accounts add up to the run's; an emptied engine starts afresh."""

import pytest
import torch

from nextblock.config import DecodeSettings
from nextblock.decoding.engine import Engine, run
from nextblock.decoding.events import Request, Step
from tests.helpers import MASK, peaked_model, random_prompts

MODES = [dict(mode="ar"), dict(mode="block", block_size=4, threshold=0.6),
         dict(mode="block", block_size=4, threshold=0.3, temperature=0.9, seed=3),
         dict(mode="verified", block_size=4, threshold=0.0)]


def single(model, prompt, s, n, seed):
    return run(model, [prompt], s, mask_token_id=MASK, max_new=[n], seeds=[seed]).all_tokens[0]


def drain(eng, submit_at=None):
    """Step `eng` to the end; `submit_at[k]` lists requests submitted before step k."""
    out, k = {}, 0
    with torch.inference_mode():
        while eng.busy or (submit_at and max(submit_at) >= k):
            for req in (submit_at or {}).get(k, []):
                eng.submit(req)
            eng.step()
            out.update(dict(eng.finished()))
            k += 1
    return out


@pytest.mark.parametrize("kw", MODES)
def test_rows_submitted_at_any_step_get_their_single_run(kw):
    model = peaked_model("llama", seed=5)
    prompts = random_prompts([4, 9, 6, 12, 3], seed=3)
    s = DecodeSettings(max_new_tokens=14, **kw).validated()
    budgets, seeds = [14, 5, 11, 9, 14], [s.seed, 7, s.seed, 2, s.seed]
    reqs = [Request(10 + i, p, budgets[i], seeds[i]) for i, p in enumerate(prompts)]
    eng = Engine(model, s, mask_token_id=MASK, max_batch=2)
    out = drain(eng, {0: reqs[:3], 3: reqs[3:4], 9: reqs[4:]})
    assert sorted(out) == [r.id for r in reqs]
    for r in reqs:
        assert out[r.id].tokens == single(model, r.prompt, s, r.max_new_tokens, r.seed), r.id
        assert out[r.id].completions[0].finish_reason == "length"
        assert out[r.id].prompts == [r.prompt]


def test_max_batch_bounds_the_rows_of_every_forward():
    model = peaked_model("qwen2", seed=6)
    s = DecodeSettings(mode="block", block_size=4, threshold=0.5, max_new_tokens=10).validated()
    eng = Engine(model, s, mask_token_id=MASK, max_batch=3)
    for i, p in enumerate(random_prompts([5, 3, 8, 2, 7, 4, 6], seed=1)):
        eng.submit(Request(i, p, 10 - i))
    seen = []
    with torch.inference_mode():
        while eng.busy:
            seen += [len(ev.rows) for ev in eng.step() if isinstance(ev, Step)]
    assert max(seen) == 3 and len(eng.finished()) == 7


@pytest.mark.parametrize("kw", MODES[1:])
def test_cancel_a_queued_row_and_a_running_row(kw):
    model = peaked_model("llama", seed=2)
    prompts = random_prompts([6, 4, 5], seed=8)
    s = DecodeSettings(max_new_tokens=20, **kw).validated()
    eng = Engine(model, s, mask_token_id=MASK, max_batch=2)
    for i, p in enumerate(prompts):
        eng.submit(Request(i, p, 20, s.seed))
    with torch.inference_mode():
        eng.step()  # rows 0 and 1 prefilled; row 2 waits for room
        eng.cancel(2)
        assert [(i, g.completions[0].finish_reason, g.tokens) for i, g in eng.finished()] \
            == [(2, "cancelled", [])]
        for _ in range(3):
            eng.step()
        eng.cancel(1)
    out = drain(eng)
    assert out[1].completions[0].finish_reason == "cancelled"
    got = out[1].tokens
    assert 0 < len(got) < 20 and got == single(model, prompts[1], s, 20, s.seed)[:len(got)]
    assert out[0].tokens == single(model, prompts[0], s, 20, s.seed)


def test_row_accounts_add_up_to_the_run():
    """Each row counts the forwards it ran and its drafts; the run counts each forward once:
    the rows' forwards and seconds sum to row-weighted totals, drafts sum exactly."""
    model = peaked_model("llama", seed=4)
    s = DecodeSettings(mode="verified", block_size=4, threshold=0.0,
                       max_new_tokens=16).validated()
    eng = Engine(model, s, mask_token_id=MASK, max_batch=4)
    prompts = random_prompts([5, 7, 3, 9, 4, 6], seed=2)
    for i, p in enumerate(prompts):
        eng.submit(Request(i, p, 8 + 2 * i))
    rows_run, steps = 0, []
    with torch.inference_mode():
        while eng.busy:
            steps += [ev for ev in eng.step() if isinstance(ev, Step)]
    whole = eng.result(list(range(6)))  # reads the ended rows; finished() hands them out
    out = dict(eng.finished())
    counted = [st for st in steps if not (st.fused or st.cached)]
    rows_run = sum(len(st.rows) for st in counted)
    assert sum(g.forwards for g in out.values()) == rows_run
    assert eng.total.forwards == len(counted) < rows_run
    assert sum(g.drafted for g in out.values()) == eng.total.drafted > 0
    assert sum(g.accepted for g in out.values()) == eng.total.accepted
    assert sum(g.seconds for g in out.values()) <= eng.total.seconds
    assert whole.all_tokens == [out[i].tokens for i in range(6)]
    assert whole.forwards == eng.total.forwards


def test_an_emptied_engine_starts_a_fresh_batch():
    model = peaked_model("qwen2", seed=3)
    s = DecodeSettings(mode="block", block_size=4, threshold=0.5, max_new_tokens=9).validated()
    a, b = random_prompts([5, 8], seed=6)
    eng = Engine(model, s, mask_token_id=MASK)
    first = drain(eng, {0: [Request(0, a, 9)]})
    assert not eng.busy and eng.step() == []
    second = drain(eng, {0: [Request(1, b, 9)]})
    assert first[0].tokens == single(model, a, s, 9, s.seed)
    assert second[1].tokens == single(model, b, s, 9, s.seed)
    with pytest.raises(ValueError, match="already"):
        eng.submit(Request(2, a, 9))
        eng.submit(Request(2, b, 9))
