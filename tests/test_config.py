"""Decoding settings validation and the nextblock.json round trip."""

import pytest

from nextblock.config import BlockConfig, DecodeSettings
from nextblock.errors import ConfigError


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.5), ("temperature", float("inf")), ("top_p", 0.0), ("top_p", 1.5),
    ("top_k", -1), ("block_size", 0), ("block_size", 2.5), ("max_new_tokens", 0),
    ("mode", "diffusion"), ("confidence", "vibes"), ("repetition_penalty", 0.0),
    ("threshold", float("nan")), ("seed", "abc"), ("sub_block", 0), ("stop", ("",)),
])
def test_invalid_values_are_named(field, value):
    with pytest.raises(ConfigError) as e:
        DecodeSettings(**{field: value}).validated()
    assert f"invalid {field}=" in str(e.value)


def test_sub_block_must_divide_block():
    with pytest.raises(ConfigError, match="must divide block_size=8"):
        DecodeSettings(block_size=8, sub_block=3).validated()
    assert DecodeSettings(block_size=8, sub_block=4).validated().effective_sub_block == 4
    assert DecodeSettings(mode="ar", block_size=8).validated().effective_block_size == 1


def test_block_config_round_trip(tmp_path):
    cfg = BlockConfig(mask_token_id=7, block_size=16, trained_block_sizes=[1, 2, 4],
                      decoding={"mode": "block", "threshold": 0.8, "sub_block": 8})
    cfg.save(tmp_path)
    again = BlockConfig.load(tmp_path)
    assert again == cfg
    s = again.recommended()
    assert (s.mode, s.block_size, s.sub_block, s.threshold) == ("block", 16, 8, 0.8)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temporary file


def test_block_config_rejects_unsupported_shift():
    with pytest.raises(ConfigError, match="shift"):
        BlockConfig.from_dict({"mask_token_id": 1, "shift": 0})
