"""The settings of an adaptation run (`nextblock adapt` flags, or a JSON file), checked
before anything loads: types (a JSON config is not trusted), ranges, data paths.

    cfg = AdaptConfig.from_file("scripts/adapt_general.json", steps=800)
    cfg.validated()
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .curriculum import BlockCurriculum
from .data import parse_source
from .objective import ObjectiveSettings

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class AdaptConfig:
    data: list[str] = field(default_factory=list)  # "path" or "path:weight"
    out: str = "runs/adapt"
    model: str | None = None
    field: str | None = None  # record field (default: messages, else text)
    seq_len: int = 256
    batch_size: int = 2  # per process and micro-batch
    grad_accum: int = 1
    steps: int = 400
    lr: float = 1e-4
    warmup: int = 20
    schedule: str = "cosine"  # cosine | wsd (constant, then linear decay over the last 20%)
    weight_decay: float = 0.0
    lora_r: int = 0  # 0: full fine-tuning
    lora_alpha: int = 32
    init_adapter: str | None = None  # start LoRA + mask embedding from an exported adapter
    block_max: int = 4  # curriculum b(s) = min(b_max, b0 * r^floor(max(0, s - s0) / D))
    block_start: int = 1  # b0
    block_ratio: int = 2  # r
    block_warmup: int = 0  # s0
    block_stage_steps: int | None = None  # D; None: so that growth ends at block_growth_end
    block_growth_end: float = 0.6  # fraction of the run where the last block size starts
    ar_weight: float = 0.5
    training_mask: str = "context_causal"  # or "block_causal" (ablation; ar_weight 0)
    mask_schedule: str = "block"
    inverse_t_weight: bool = False
    complementary: bool = False
    precision: str = "fp32"  # fp32 | bf16 (autocast; weights stay fp32)
    grad_checkpointing: bool = False
    # long context: RoPE scaling for positions beyond the base window ("yarn:4" or a dict of
    # RoPE parameters), text rows packed with document boundaries, attention path
    rope_scaling: str | dict | None = None
    pack_documents: bool = False
    attention: str = "auto"  # auto | dense | chunked (see training.objective)
    attention_chunk: int = 512
    seed: int = 0
    save_every: int = 50
    keep: int = 2

    def validated(self) -> "AdaptConfig":
        if not self.data:
            raise ConfigError("no training data: give --data PATH[:WEIGHT] at least once")
        for name in ("seq_len", "batch_size", "grad_accum", "steps", "save_every", "keep",
                     "block_max", "block_start"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"invalid {name}={v!r}: must be an integer >= 1")
        if self.seq_len < self.block_max:
            raise ConfigError(f"seq_len={self.seq_len} is smaller than the block size "
                              f"{self.block_max}")
        if self.schedule not in ("cosine", "wsd"):
            raise ConfigError(f"invalid schedule={self.schedule!r}: cosine or wsd")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"invalid precision={self.precision!r}: fp32 or bf16")
        if self.attention not in ("auto", "dense", "chunked"):
            raise ConfigError(f"invalid attention={self.attention!r}: auto, dense or chunked")
        if self.attention_chunk < 1:
            raise ConfigError(f"invalid attention_chunk={self.attention_chunk!r}: must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"invalid lr={self.lr!r}: must be > 0")
        self.objective_settings()  # ar_weight, training_mask, ... checked where defined
        for spec in self.data:  # before the model loads: a typo should not cost a minute
            path, _ = parse_source(spec)
            if not Path(path).exists():
                raise ConfigError(f"data: {path} does not exist")
        return self

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "AdaptConfig":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from None
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        for k, v in d.items():
            _check_type(cls, k, v, str(path))
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**d)

    def curriculum(self) -> BlockCurriculum:
        if self.block_stage_steps is not None:
            return BlockCurriculum(b0=self.block_start, r=self.block_ratio, b_max=self.block_max,
                                   s0=self.block_warmup, D=self.block_stage_steps)
        return BlockCurriculum.for_run(self.steps, b_max=self.block_max, b0=self.block_start,
                                       r=self.block_ratio, s0=self.block_warmup,
                                       end_fraction=self.block_growth_end)

    def objective_settings(self) -> ObjectiveSettings:
        return ObjectiveSettings(ar_weight=self.ar_weight, mask_schedule=self.mask_schedule,
                                 inverse_t_weight=self.inverse_t_weight,
                                 complementary=self.complementary, attention=self.attention,
                                 attention_chunk=self.attention_chunk,
                                 training_mask=self.training_mask)


def _matches(v, tp) -> bool:
    """isinstance for the annotations AdaptConfig uses (int, float, str, bool, list[str],
    dict, unions with None); an int is a float, a bool is not an int."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(v, t) for t in typing.get_args(tp))
    if tp is type(None):
        return v is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(v, list) and all(_matches(x, item) for x in v)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, origin or tp)


def _check_type(cls, name: str, value, where: str) -> None:
    tp = typing.get_type_hints(cls)[name]
    if not _matches(value, tp):
        want = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        raise ConfigError(f"{where}: {name}={value!r} has the wrong type: expected {want}")
