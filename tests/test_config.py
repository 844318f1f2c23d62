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


def test_a_recommendation_may_name_its_own_block_size():
    cfg = BlockConfig.from_dict({"mask_token_id": 7, "block_size": 4, "trained_block_sizes": [1, 2, 4],
                                 "decoding": {"mode": "verified", "block_size": 2, "threshold": 0.0}})
    s = cfg.recommended()
    assert (s.mode, s.block_size, s.threshold) == ("verified", 2, 0.0)
    assert BlockConfig(mask_token_id=7, block_size=4).recommended().block_size == 4


def test_block_config_rejects_unsupported_shift():
    with pytest.raises(ConfigError, match="shift"):
        BlockConfig.from_dict({"mask_token_id": 1, "shift": 0})


def test_one_definition_of_every_decoding_setting():
    """The CLI flags and the server's request fields come from DecodeSettings' fields: the
    same names, the same choices, and the server refuses exactly the values that
    validated() refuses."""
    import dataclasses

    from pydantic import ValidationError

    from nextblock.cli import build_parser
    from nextblock.config import DecodeSettings
    from nextblock.serving.schemas import CompletionRequest

    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    flags = {a.dest: a for a in generate._actions}
    fields = {f.name: f for f in dataclasses.fields(DecodeSettings)}
    assert set(fields) <= set(flags)
    assert flags["mode"].choices == fields["mode"].metadata["choices"]
    for name, value in [("block_size", 257), ("block_size", 0), ("temperature", 2.5),
                        ("top_p", 0.0), ("top_k", -1), ("repetition_penalty", 0.0),
                        ("seed", 2 ** 64), ("sub_block", 0), ("mode", "fast")]:
        with pytest.raises(ConfigError, match=f"invalid {name}="):
            DecodeSettings(**{name: value}).validated()
        with pytest.raises(ValidationError, match=name):
            CompletionRequest(model="m", prompt="x", **{name: value})
    for name, value in [("block_size", 256), ("temperature", 2.0), ("top_p", 1.0),
                        ("seed", -(2 ** 63)), ("mode", "verified")]:
        DecodeSettings(**{name: value}).validated()
        CompletionRequest(model="m", prompt="x", **{name: value})


def test_replace_resets_optional_fields():
    s = DecodeSettings(block_size=8, sub_block=4, seed=3)
    r = s.replace(sub_block=None, seed=None, threshold=None)  # None keeps a required field
    assert r.sub_block is None and r.seed is None and r.threshold == s.threshold
