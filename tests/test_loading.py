"""Loading: local HF directories, the mask token, nextblock.json round trip, clear errors."""

import json

import pytest
import torch

import nextblock
from nextblock.errors import ConfigError, ModelLoadError
from tests.helpers import VOCAB, save_tiny


@pytest.fixture
def tiny_dir(tmp_path):
    return save_tiny(tmp_path / "tiny")


def test_load_adds_mask_token_in_a_spare_row(tiny_dir):
    lm = nextblock.load(tiny_dir)
    m = lm.config.mask_token_id
    assert lm.tokenizer.convert_ids_to_tokens(m) == "<|mask|>"
    # the tokenizer had 92 tokens, the embedding 96 rows: a spare row is used, no resize
    assert m == 92 and lm.model.get_input_embeddings().weight.shape[0] == VOCAB
    assert lm.config.decoding == {"mode": "ar"} and lm.config.trained_block_sizes == [1]


def test_mask_token_grows_the_embeddings_when_full(tmp_path):
    words = [f"w{i}" for i in range(VOCAB - 4)]  # the tokenizer fills all 96 rows
    d = save_tiny(tmp_path / "full", words=words)
    lm = nextblock.load(d)
    emb = lm.model.get_input_embeddings().weight
    assert lm.config.mask_token_id == VOCAB and emb.shape[0] == VOCAB + 1
    torch.testing.assert_close(emb[VOCAB], emb[:VOCAB].mean(0))
    assert lm.model.get_output_embeddings().weight.shape[0] == VOCAB + 1


def test_existing_mask_or_reserved_token_is_reused(tmp_path):
    d = save_tiny(tmp_path / "m", words=["a", "b", "<|mask|>", "c"])
    assert nextblock.load(d).config.mask_token_id == 6


def test_save_and_reload_keeps_settings_and_outputs(tiny_dir, tmp_path):
    lm = nextblock.load(tiny_dir)
    lm.config.block_size = 8
    lm.config.decoding = {"mode": "block", "threshold": 0.7}
    out = tmp_path / "saved"
    lm.save(out)
    assert json.loads((out / "nextblock.json").read_text())["mask_token_id"] == 92
    again = nextblock.load(out)
    assert again.config == lm.config
    s = again.settings()
    assert (s.mode, s.block_size, s.threshold) == ("block", 8, 0.7)
    a = lm.generate("w1 w2 w3", chat=False, max_new_tokens=10, mode="block", block_size=4)
    b = again.generate("w1 w2 w3", chat=False, max_new_tokens=10, mode="block", block_size=4)
    assert a.tokens == b.tokens


def _expect(exc, spec, *words):
    with pytest.raises(exc) as e:
        nextblock.load(spec)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_unknown_model(tmp_path):
    _expect(ModelLoadError, str(tmp_path / "missing"), "model not found", "missing")
    _expect(ModelLoadError, "nobody/no-such-model-xyz", "model not found", "never downloads")


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    _expect(ModelLoadError, tmp_path / "empty", "no config.json")


def test_unsupported_architecture(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    _expect(ModelLoadError, tiny_dir, "unsupported architecture", "gpt2", "llama")


def test_pickle_weights_are_refused(tiny_dir):
    (tiny_dir / "model.safetensors").rename(tiny_dir / "pytorch_model.bin")
    _expect(ModelLoadError, tiny_dir, "no safetensors", "pytorch_model.bin", "pickle")


def test_corrupt_weights(tiny_dir):
    f = tiny_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    _expect(ModelLoadError, tiny_dir, "cannot load model")


def test_corrupt_gguf(tmp_path):
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"GGUF" + b"\x00" * 64)
    _expect(ModelLoadError, f, "broken.gguf", "GGUF")


@pytest.mark.parametrize("content,words", [
    ("{not json", ["malformed JSON"]),
    ('{"mask_token_id": 3, "colour": 1}', ["unknown field", "colour"]),
    ('{"block_size": 4}', ["missing", "mask_token_id"]),
    ('{"mask_token_id": 3, "decoding": {"threshold": "high"}}', ["threshold"]),
    ('{"mask_token_id": 500}', ["mask_token_id", "outside the embedding"]),
    ('[1, 2]', ["JSON object"]),
])
def test_malformed_nextblock_json(tiny_dir, content, words):
    (tiny_dir / "nextblock.json").write_text(content)
    _expect(ConfigError, tiny_dir, "nextblock.json", *words)


def test_invalid_dtype(tiny_dir):
    with pytest.raises(ConfigError, match="dtype"):
        nextblock.load(tiny_dir, dtype="float64")
