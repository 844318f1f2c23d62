"""Exactness of the decoding loop, token for token in float32 on tiny random models:
AR vs transformers generate, cached block decoding vs full recomputation, B=1 vs AR,
batch vs single."""

import pytest
import torch

from nextblock.config import DecodeSettings
from nextblock.decoding.engine import run
from nextblock.decoding.loop import Emit, Step, decode
from nextblock.decoding.sampling import Sampler
from tests.helpers import MASK, peaked_model, random_prompts, tiny_model


def settings(**kw):
    return DecodeSettings(**kw).validated()


def hf_greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False, eos_token_id=None, pad_token_id=0,
                         suppress_tokens=[MASK])
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_ar_equals_transformers_generate(family):
    model = tiny_model(family)
    for prompt in random_prompts([1, 6, 13], seed=1):
        res = run(model, [prompt], settings(mode="ar", max_new_tokens=24), mask_token_id=MASK)
        assert res.all_tokens[0] == hf_greedy(model, prompt, 24)
        assert res.forwards == 24  # one prefill + one causal pass per further token


def _hf_logits(model, tokens, ctx, grid=None):
    """Logits of HF's own forward over `tokens`, the first `ctx` causal and the rest one
    bidirectional block, mask written from the design's definition (no nextblock code).
    grid=(P, B): a block-causal model, whose blocks of B tokens from position P on (the
    committed response) each see themselves whole."""
    T = len(tokens)
    mask = torch.zeros(1, 1, T, T, dtype=torch.bool)
    same = lambda q, k: grid is not None and min(q, k) >= grid[0] and (q - grid[0]) // grid[1] == (
        k - grid[0]) // grid[1]
    for q in range(T):
        for k in range(T):
            mask[0, 0, q, k] = (k <= q or same(q, k)) if q < ctx else True
    out = model(torch.tensor([tokens]), attention_mask=mask,
                position_ids=torch.arange(T)[None], use_cache=False)
    return out.logits[0]


def measure(p: torch.Tensor, token: int, kind: str) -> float:
    """Confidence of one position from its distribution p [V] (system.md section 5)."""
    if kind == "prob":
        return float(p[token])
    if kind == "margin":
        top = torch.sort(p, descending=True).values
        return float(top[0] - top[1])
    return float(torch.special.xlogy(p, p).sum())  # negative entropy


def reference_unmask(block: list[int], need: list[bool], probs, tokens, s) -> set[int]:
    """The design's unmasking rule, written without nextblock.decoding: inside the current
    sub-block (the one holding the first masked position; sub-blocks counted from the
    anchor at position 0), the most confident masked position, plus every masked position
    whose confidence exceeds the threshold. probs[j], tokens[j]: block position j."""
    S = s.effective_sub_block
    masked = [j for j, t in enumerate(block) if t == MASK and need[j]]
    current = [j for j in masked if j // S == masked[0] // S]
    conf = {j: measure(probs[j], tokens[j], s.confidence) for j in current}
    best = max(current, key=lambda j: conf[j])  # the first of equals, like an argmax
    return {best} | {j for j in current if conf[j] > s.threshold}


def reference_decode(model, prompt, s, stop_ids=(), block_causal=False):
    """Block decoding that recomputes the whole sequence from scratch at every step, with
    its own unmasking rule; only sampled settings draw through nextblock's Sampler (the
    random stream is what makes them reproducible). Returns the tokens, the forward count
    and how many tokens every denoise step filled."""
    sampler = Sampler(s, MASK, [s.seed])

    def choose(logits):  # [n, V] -> (probs [n, V], tokens [n])
        if s.greedy:
            probs = torch.softmax(logits.float().index_fill(-1, torch.tensor([MASK]),
                                                            -torch.inf), dim=-1)
            return probs, probs.argmax(-1)
        probs = sampler.probs(logits[None], None)
        return probs[0], sampler.choose(probs)[0]

    B, gen, fills = s.effective_block_size, [], []
    grid = (len(prompt), B) if block_causal else None
    anchor = int(choose(_hf_logits(model, prompt, len(prompt))[-1:])[1][0])
    forwards = 1
    while True:
        b = min(B, s.max_new_tokens - len(gen))
        block = [anchor] + [MASK] * (b - 1)
        ctx = len(prompt) + len(gen)
        while True:
            stops = [j for j, t in enumerate(block) if t in stop_ids]
            need = [j < stops[0] if stops else True for j in range(b)]
            if not any(t == MASK and n for t, n in zip(block, need)):
                break
            probs, tokens = choose(_hf_logits(model, prompt + gen + block, ctx,
                                              grid)[ctx:ctx + b - 1])
            probs = torch.cat([torch.zeros_like(probs[:1]), probs])  # position 0: anchor
            tokens = [block[0]] + tokens.tolist()
            chosen = reference_unmask(block, need, probs, tokens, s)
            block = [tokens[j] if j in chosen else t for j, t in enumerate(block)]
            fills.append(len(chosen))
            forwards += 1
        stops = [j for j, t in enumerate(block) if t in stop_ids]
        gen += block[:stops[0] + 1] if stops else block
        if stops or len(gen) >= s.max_new_tokens:
            return gen, forwards, fills
        anchor = int(choose(_hf_logits(model, prompt + gen, len(prompt + gen), grid)[-1:])[1][0])
        forwards += 1


GRID = [  # on a peaked model: the thresholds in (0, 1) fill 2 .. B-2 masks in some steps
    dict(block_size=4, threshold=0.9),
    dict(block_size=4, threshold=0.0),
    dict(block_size=8, sub_block=4, threshold=0.5),
    dict(block_size=8, sub_block=2, threshold=1.0, confidence="margin"),
    dict(block_size=8, threshold=0.4, confidence="margin"),
    dict(block_size=6, threshold=-1.5, confidence="neg_entropy"),
    dict(block_size=4, threshold=0.3, temperature=0.8, top_p=0.9, top_k=20, seed=5),
]


def partial(kw) -> bool:
    """Whether a setting can fill some but not all of a sub-block's masks in a step."""
    sub = kw.get("sub_block") or kw["block_size"]
    return sub >= 4 and kw["threshold"] not in (0.0, 1.0)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("kw", GRID)
def test_cached_block_decoding_equals_full_recomputation(kw, fused):
    """Fused commit changes nothing but the forward count: a kept fused step is a denoise
    step that rode along with the previous commit; with it on, some steps must ride."""
    model = peaked_model("llama", seed=3)
    s = settings(mode="block", max_new_tokens=19, fused_commit=fused, **kw)  # 19: not k*B
    fills, fused_steps = [], 0
    for prompt in random_prompts([5, 11], seed=2):
        res = run(model, [prompt], s, mask_token_id=MASK)
        ref, ref_forwards, ref_fills = reference_decode(model, prompt, s)
        assert res.all_tokens[0] == ref
        assert len(ref) == 19 and res.forwards + res.fused == ref_forwards
        fills += ref_fills
        fused_steps += res.fused
    if not fused:
        assert fused_steps == 0
    elif kw["threshold"] > 0.0:  # at 0 a block fills in one step, whose guess of the next
        assert fused_steps > 0   # anchor saw only masks: it may never be confirmed
    B = kw["block_size"]
    if partial(kw):  # the rule is exercised where it matters: some steps fill 2 .. B-2
        assert any(2 <= n <= B - 2 for n in fills), fills
    elif kw["threshold"] == 1.0:
        assert set(fills) == {1}


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("kw", GRID[:3])
def test_block_causal_model_stores_blocks_bidirectionally(kw, fused):
    """A model trained with the block-causal mask (masks) decodes as if each committed block
    were re-read whole; the reference recomputes everything with that mask."""
    model = peaked_model("llama", seed=3)
    model.nextblock_attention = "block_causal"
    s = settings(mode="block", max_new_tokens=19, fused_commit=fused, **kw)
    prompts = random_prompts([5, 11, 8], seed=2)
    got = [run(model, [p], s, mask_token_id=MASK).all_tokens[0] for p in prompts]
    for p, g in zip(prompts, got):
        assert g == reference_decode(model, p, s, block_causal=True)[0]
    del model.nextblock_attention  # the plain model writes something else
    assert got != [run(model, [p], s, mask_token_id=MASK).all_tokens[0] for p in prompts]


def test_cached_block_decoding_stops_like_reference():
    model = tiny_model("qwen3", seed=4)
    s = settings(mode="block", block_size=4, threshold=0.2, max_new_tokens=40)
    prompt = random_prompts([7], seed=9)[0]
    free = run(model, [prompt], s, mask_token_id=MASK).all_tokens[0]
    stop = free[9]  # a token the model does produce: decoding must end at its first use
    res = run(model, [prompt], s, mask_token_id=MASK, stop_token_ids=[stop])
    ref = reference_decode(model, prompt, s, stop_ids=[stop])[0]
    assert res.all_tokens[0] == ref
    assert res.all_tokens[0][-1] == stop and stop not in res.all_tokens[0][:-1]
    assert res.finish_reasons == ["stop"]


def test_block_size_one_equals_ar():
    model = tiny_model("qwen2")
    prompts = random_prompts([4, 9], seed=4)
    for prompt in prompts:
        ar = run(model, [prompt], settings(mode="ar", max_new_tokens=17), mask_token_id=MASK)
        b1 = run(model, [prompt], settings(mode="block", block_size=1, max_new_tokens=17),
                 mask_token_id=MASK)
        assert b1.all_tokens == ar.all_tokens and b1.forwards == ar.forwards


@pytest.mark.parametrize("kw", [
    dict(mode="ar"),
    dict(mode="block", block_size=4, threshold=0.9),
    dict(mode="block", block_size=8, sub_block=4, threshold=0.6),
    dict(mode="block", block_size=4, threshold=0.3, temperature=1.0, top_k=30, seed=11),
    dict(mode="block", block_size=4, threshold=0.0, fused_commit=True),
])
def test_batch_equals_single(kw):
    model = peaked_model("llama", seed=7)
    prompts = random_prompts([3, 12, 7, 1], seed=5)
    s = settings(max_new_tokens=21, **kw)
    # a frequent token as stop token, so rows end at different blocks and leave the batch
    free = run(model, prompts[:1], s, mask_token_id=MASK).all_tokens[0]
    stop = [free[6]]
    batch = run(model, prompts, s, mask_token_id=MASK, stop_token_ids=stop, trace=True)
    if kw["mode"] == "block" and 0 < kw["threshold"] < 1:  # rows of one step fill unequally
        assert any(len({len(f) for f in st.filled.values()}) > 1
                   for st in batch.trace if st.kind in ("denoise", "mixed"))
    singles = [run(model, [p], s, mask_token_id=MASK, stop_token_ids=stop) for p in prompts]
    assert batch.all_tokens == [r.all_tokens[0] for r in singles]
    assert batch.finish_reasons == [r.finish_reasons[0] for r in singles]
    assert "stop" in batch.finish_reasons


def test_block_mode_fills_several_tokens_per_forward_at_low_threshold():
    model = tiny_model("llama")
    prompt = random_prompts([6])[0]
    s1 = settings(mode="block", block_size=8, threshold=1.0, max_new_tokens=32,
                  fused_commit=False)
    s0 = settings(mode="block", block_size=8, threshold=0.0, max_new_tokens=32,
                  fused_commit=False)
    one = run(model, [prompt], s1, mask_token_id=MASK)
    fast = run(model, [prompt], s0, mask_token_id=MASK)
    # threshold 1.0: one token per denoise step -> 7 steps + 1 causal pass per block
    assert one.forwards == 1 + 4 * 7 + 3
    # threshold 0: every mask of the block in one step
    assert fast.forwards == 1 + 4 * 1 + 3
    assert len(fast.all_tokens[0]) == len(one.all_tokens[0]) == 32


def test_events_trace_and_emits_are_consistent():
    model = tiny_model("llama")
    prompts = random_prompts([4, 8], seed=3)
    s = settings(mode="block", block_size=4, sub_block=2, threshold=0.7, max_new_tokens=10)
    events = list(torch.inference_mode()(lambda: list(decode(model, prompts, s,
                                                             mask_token_id=MASK)))())
    steps = [e for e in events if isinstance(e, Step)]
    emits = [e for e in events if isinstance(e, Emit)]
    res = run(model, prompts, s, mask_token_id=MASK, trace=True)
    assert [st.kind for st in steps][0] == "prefill"
    assert len(steps) == res.forwards + res.fused
    for row in range(2):
        filled = {}
        for st in res.trace:
            for idx, tok in st.filled.get(row, []):
                assert idx not in filled  # a position is decided exactly once
                filled[idx] = tok
        assert [filled[i] for i in range(len(res.all_tokens[row]))] == res.all_tokens[row]
        assert sum((e.tokens.get(row, []) for e in emits), []) == res.all_tokens[row]
    # every Step names the rows its forward ran: in block mode, the rows not yet finished
    alive = set()
    for e in events:
        if isinstance(e, Emit):
            alive -= set(e.finished)
        elif e.kind == "prefill":
            alive |= set(e.rows)
        else:
            assert set(e.rows) == alive and set(e.filled) <= alive
    # within a denoise step, a row fills only positions of one sub-block
    for st in steps:
        if st.kind == "denoise":
            for fills in st.filled.values():
                assert len({(i - st.start) // 2 for i, _ in fills}) == 1


def test_context_limit_caps_generation():
    model = tiny_model("llama", max_position_embeddings=32)
    prompt = random_prompts([20])[0]
    res = run(model, [prompt], settings(mode="block", block_size=4, max_new_tokens=50),
              mask_token_id=MASK, max_context=32)
    assert len(res.all_tokens[0]) == 12 and res.finish_reasons == ["length"]


@pytest.mark.parametrize("mode", ["ar", "block", "verified"])
def test_chunked_prefill_equals_one_pass(mode):
    """A prompt prefilled a few tokens at a time (long contexts: bounded memory) gives the
    tokens a one-pass prefill gives, also for a batch whose short row is padding for whole
    chunks."""
    model = tiny_model("qwen2", seed=8)
    prompts = random_prompts([3, 29, 17], seed=9)
    kw = dict(mode=mode, block_size=4, threshold=0.5, max_new_tokens=14)
    whole = run(model, prompts, settings(prefill_chunk=4096, **kw), mask_token_id=MASK)
    for chunk in (1, 5, 16):
        chunked = run(model, prompts, settings(prefill_chunk=chunk, **kw), mask_token_id=MASK)
        assert chunked.all_tokens == whole.all_tokens


def test_chunked_prefill_builds_no_prompt_square_mask():
    """Each prefill forward attends from at most `prefill_chunk` queries."""
    from nextblock import masks

    model = tiny_model("llama")
    seen = []
    real = masks.decode_mask

    def spy(valid, start, length, *args):
        seen.append(length)
        return real(valid, start, length, *args)

    masks.decode_mask = spy
    try:
        run(model, random_prompts([40], seed=2), settings(mode="ar", max_new_tokens=2,
                                                          prefill_chunk=16), mask_token_id=MASK)
    finally:
        masks.decode_mask = real
    assert seen[:3] == [16, 16, 8] and max(seen) == 16


@pytest.mark.parametrize("mode", ["ar", "block", "verified"])
def test_a_stored_prefill_decodes_like_a_fresh_one(mode):
    """A prompt prefilled once gives, in any mode and as often as it is used, the tokens a
    fresh prefill gives; a longer prompt that extends it prefills only the rest."""
    from nextblock.decoding.loop import prefill

    model = tiny_model("llama", seed=4)
    doc, question = random_prompts([23, 6], seed=12)
    s = settings(mode=mode, block_size=4, threshold=0.5, max_new_tokens=13, prefill_chunk=8)
    p = prefill(model, doc, mask_token_id=MASK, chunk=8)
    for prompt in (doc, doc + question, doc):  # the prefix is not changed by its uses
        fresh = run(model, [prompt], s, mask_token_id=MASK)
        reused = run(model, [prompt], s, mask_token_id=MASK, prefix=p)
        assert reused.all_tokens == fresh.all_tokens
        assert reused.forwards == fresh.forwards - (1 if prompt == doc else 0)
    with pytest.raises(ValueError, match="starts with its tokens"):
        run(model, [question], s, mask_token_id=MASK, prefix=p)
