"""The batch rows over one KV cache: rows leaving and joining keep every row's attention
exactly what it would be alone."""

import torch

from nextblock.decoding.rows import Rows
from tests.helpers import MASK, random_prompts, tiny_model


def _alone(model, prompt):
    rows = Rows(model, [prompt], 32, MASK)
    rows.prefill(torch.tensor([prompt]), chunk=5)
    return rows


def test_leaving_rows_take_their_padding_columns_with_them():
    """A long row leaves: the columns only it used go too, and the rest decode as alone."""
    model = tiny_model("llama", seed=2)
    long, short = random_prompts([13, 4], seed=8)
    with torch.inference_mode():
        rows = Rows(model, [long, short], 32, MASK)
        rows.prefill(torch.tensor([long, [short[0]] * 9 + short]), chunk=5)
        alone = Rows(model, [short], 32, MASK)
        alone.prefill(torch.tensor([short]), chunk=5)
        rows.keep_rows(torch.tensor([1]))
        assert rows.cols == alone.cols == 4 and rows.cache.length == 4
        assert torch.equal(rows.seq[:, :4], alone.seq[:, :4]) and bool(rows.valid[:, :4].all())
        nxt = torch.tensor([[7, MASK, MASK]])
        a = rows.forward(nxt, rows.mask(3, causal=False))
        b = alone.forward(nxt, alone.mask(3, causal=False))
        assert torch.allclose(a, b, atol=1e-5)
        # then a row joins (the cache kept its width, the new row takes a spare slot)
        third = random_prompts([6], seed=11)[0]
        rows.merge(_alone(model, third))
        got = rows.forward(nxt.expand(2, -1), rows.mask(3, causal=False))
        for r, prompt in enumerate((short, third)):
            ref = _alone(model, prompt)
            want = ref.forward(nxt, ref.mask(3, causal=False))
            assert torch.allclose(got[r], want[0], atol=1e-5)


def test_merged_rows_are_right_aligned_and_decode_as_alone():
    """A shorter batch joins a longer one (and the other way round): the stored columns line
    up at the right, the new left padding is never a key, and each row's next forward gives
    the logits it gives alone."""
    model = tiny_model("llama", seed=2)
    a, b = random_prompts([11, 5], seed=9)
    nxt = torch.tensor([[7, MASK, MASK]])
    with torch.inference_mode():
        for first, second in ((a, b), (b, a)):
            rows = _alone(model, first)
            rows.merge(_alone(model, second))
            assert rows.cols == max(len(a), len(b))
            assert rows.valid[:, :rows.cols].sum(1).tolist() == [len(first), len(second)]
            got = rows.forward(nxt.expand(2, -1), rows.mask(3, causal=False))
            for r, prompt in enumerate((first, second)):
                alone = _alone(model, prompt)
                want = alone.forward(nxt, alone.mask(3, causal=False))
                assert torch.allclose(got[r], want[0], atol=1e-5)
