"""Long-context adaptation: RoPE scaling beyond the base window, text packed with document
boundaries, the chunked attention path, and what an export records of them."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import nextblock
from nextblock.errors import ConfigError
from nextblock.loading import parse_rope_scaling, set_rope_scaling
from nextblock.modeling import decoder
from nextblock.training import export as ex
from nextblock.training.trainer import AdaptConfig, adapt
from tests.helpers import save_tiny, tiny_model


def test_linear_scaling_stretches_positions():
    """Linear RoPE scaling by f: position p is rotated as the base model rotates p / f."""
    base, scaled = tiny_model("llama"), tiny_model("llama")
    assert set_rope_scaling(scaled, {"rope_type": "linear", "factor": 4.0}) == 4 * 256
    assert scaled.config.rope_parameters["original_max_position_embeddings"] == 256
    h = torch.zeros(1, 1, 32)
    pos = torch.arange(0, 1024, 7)[None]
    cos, sin = decoder(scaled).rotary_emb(h, pos)
    cos0, sin0 = decoder(base).rotary_emb(h, pos.float() / 4)
    torch.testing.assert_close(cos, cos0)
    torch.testing.assert_close(sin, sin0)
    # the factor is relative to the original window, also when applied again
    assert set_rope_scaling(scaled, {"rope_type": "yarn", "factor": 2.0}) == 512


def test_rope_scaling_errors():
    model = tiny_model("qwen3")
    with pytest.raises(ConfigError, match="'dynamic' changes the frequencies"):
        set_rope_scaling(model, {"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(ConfigError, match="unknown rope scaling type 'ntk'"):
        set_rope_scaling(model, {"rope_type": "ntk", "factor": 2.0})
    with pytest.raises(ConfigError, match="factor must be a number >= 1"):
        set_rope_scaling(model, {"rope_type": "linear", "factor": 0.5})
    with pytest.raises(ConfigError, match="expected TYPE:FACTOR"):
        parse_rope_scaling("yarn:four")
    assert parse_rope_scaling("yarn:4") == {"rope_type": "yarn", "factor": 4.0}


def write_text(path, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    with open(path, "w") as f:
        for _ in range(n):
            k = int(torch.randint(3, 30, (1,), generator=g))
            words = torch.randint(4, 60, (k,), generator=g).tolist()
            f.write(json.dumps({"text": " ".join(f"w{i}" for i in words)}) + "\n")
    return path


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A tiny model with a 32-position window trained at 64 tokens: linear RoPE x2, packed
    documents, chunked attention, LoRA."""
    d = tmp_path_factory.mktemp("long")
    model = str(save_tiny(d / "tiny", max_position_embeddings=32))
    data = str(write_text(d / "text.jsonl"))
    cfg = AdaptConfig(model=model, data=[data], out=str(d / "run"), seq_len=64, steps=3,
                      lora_r=4, block_start=4, block_max=4, save_every=3, lr=0.01,
                      rope_scaling="linear:2", pack_documents=True, attention="chunked",
                      attention_chunk=16)
    records = adapt(cfg, progress=False)
    return d, cfg, records


def test_long_context_stage_trains_and_records_its_scaling(long_run):
    d, cfg, records = long_run
    assert len(records) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    with pytest.raises(ConfigError, match=r"seq_len=64 is longer than the model's context "
                                          r"\(32 positions\); extend it with rope_scaling"):
        adapt(AdaptConfig(**{**cfg.__dict__, "rope_scaling": None, "out": str(d / "x")}),
              progress=False)
    adapter = ex.export(d / "run", d / "adapter", adapter=True)
    assert json.loads((adapter / "nextblock.json").read_text())["rope_scaling"] == \
        {"rope_type": "linear", "factor": 2.0}
    lm = nextblock.load(str(adapter))
    assert lm.context_length == 64
    merged = ex.export(d / "run", d / "merged")
    hf = AutoModelForCausalLM.from_pretrained(merged)
    assert hf.config.max_position_embeddings == 64
    assert hf.config.rope_parameters["rope_type"] == "linear"
    # the merged model and the adapter over its base decode the same way
    ids = torch.tensor([[5, 9, 17, 3] * 12])
    with torch.no_grad():
        a = nextblock.load(str(merged)).model(ids).logits
        b = lm.model(ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_prompt_longer_than_the_context_is_a_clear_error(long_run):
    d, _, _ = long_run
    lm = nextblock.load(str(d / "tiny"))
    with pytest.raises(nextblock.errors.InputError, match="context is 32 tokens"):
        lm.generate(" ".join(["w5"] * 40), chat=False, max_new_tokens=2)
    lm = nextblock.load(str(d / "tiny"), rope_scaling="linear:2")
    gen = lm.generate(" ".join(["w5"] * 40), chat=False, max_new_tokens=2, mode="ar")
    assert gen.new_tokens == 2
