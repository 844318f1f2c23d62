"""int8 linear layers: per-token scales make a row's output independent of its batch;
outputs stay close to float32; quantized models load, decode and refuse to be saved."""

import pytest
import torch

import nextblock
from nextblock.decoding.loop import run
from nextblock.config import DecodeSettings
from nextblock.quant import Int8Linear, quantize_int8
from tests.helpers import MASK, random_prompts, save_tiny, tiny_model


def test_int8_linear_rows_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40, bias=True)
    q = Int8Linear(lin)
    x = torch.randn(6, 96)
    x[3] *= 50  # an outlier row: with one scale per tensor it would coarsen every other row
    full = q(x)
    for i in range(6):
        assert torch.equal(full[i:i + 1], q(x[i:i + 1]))
    ref = lin(x)
    rel = (full - ref).norm(dim=1) / ref.norm(dim=1)
    assert rel.max() < 0.03
    assert q(x.view(2, 3, 96)).shape == (2, 3, 40)


def test_quantized_model_decodes_close_to_float32():
    model = tiny_model("qwen2", seed=5)  # q/k/v biases
    qmodel = quantize_int8(tiny_model("qwen2", seed=5))
    assert not any(type(m) is torch.nn.Linear for m in qmodel.modules())
    ids = torch.tensor([random_prompts([12], seed=1)[0]])
    with torch.no_grad():
        a, b = model(ids).logits, qmodel(ids).logits
    assert ((a - b).norm() / a.norm()) < 0.05
    s = DecodeSettings(mode="ar", max_new_tokens=8).validated()
    res = run(qmodel, random_prompts([5, 9], seed=2), s, mask_token_id=MASK)
    assert all(len(t) == 8 for t in res.tokens)


def test_load_quantized_and_errors(tmp_path):
    path = save_tiny(tmp_path / "tiny")
    lm = nextblock.load(path, quantize="int8")
    assert lm.quantization == "int8"
    assert lm.generate("w1 w2", chat=False, max_new_tokens=4, mode="ar").tokens
    with pytest.raises(nextblock.InputError, match="quantized"):
        lm.save(tmp_path / "out")
    with pytest.raises(nextblock.ConfigError, match="quantize"):
        nextblock.load(path, quantize="int4")
    with pytest.raises(nextblock.ConfigError, match="float32"):
        nextblock.load(path, quantize="int8", dtype="bfloat16")
