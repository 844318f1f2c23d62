"""Fixtures for the viz tests: a tiny random Llama, decoding runs with a trace, and a fake
tokenizer that maps id -> "t{id}" (with a few awkward strings)."""

from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nextblock.config import DecodeSettings
from nextblock.decoding.engine import run

PROMPT = [1, 2, 3, 4]
MASK_ID = 63
NASTY = "</script><!--&\"'"  # id 4's text, in the prompt: must not break the page


class FakeTokenizer:
    special = {4: NASTY, 5: "\n", 6: " x\t"}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.special.get(i, f"t{i} ") for i in ids)


@pytest.fixture(scope="session")
def tok():
    return FakeTokenizer()


@pytest.fixture(scope="session")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def generate(model, tok):
    """generate(mode=..., on_event=..., **kw) -> Generation with a trace, for PROMPT."""

    def go(mode="block", block_size=4, max_new_tokens=12, on_event=None, stop_token_ids=(),
           prompts=(PROMPT,), **kw):
        s = DecodeSettings(mode=mode, block_size=block_size, max_new_tokens=max_new_tokens,
                           **kw).validated()
        res = run(model, [list(p) for p in prompts], s, mask_token_id=MASK_ID, trace=True,
                  on_event=on_event, stop_token_ids=stop_token_ids)
        res.completions = [replace(c, text=tok.decode(c.tokens)) for c in res.completions]
        return res

    return go


def expected_masks(trace, row=0):
    """Masks left in the row's current block after each step, counted from the trace."""
    out, filled, size = [], 0, 0
    block = None
    for st in trace:
        got = st.filled.get(row)
        if got is not None:
            if st.block != block:
                block, size, filled = st.block, st.size, 0
            filled += len(got)
        out.append(size - filled)
    return out
