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
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .curriculum import BlockCurriculum
from .data import parse_source
from .objective import ObjectiveSettings

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def opt(default, help: str, choices=None, factory=None):
    """An AdaptConfig field with the help text and choices its `nextblock adapt` flag
    shows (the CLI builds one flag per field from these)."""
    meta = {"help": help, "choices": choices}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class AdaptConfig:
    data: list[str] = opt(None, "PATH[:WEIGHT] of a training file or folder (repeatable)",
                          factory=list)
    out: str = opt("runs/adapt", "the run's directory (checkpoints, metrics)")
    model: str | None = opt(None, "the model to adapt (default: the shipped default)")
    field: str | None = opt(None, "record field (default: messages if present, else text)")
    seq_len: int = opt(256, "tokens per training row")
    batch_size: int = opt(2, "rows per process and micro-step")
    grad_accum: int = opt(1, "micro-steps per optimizer step")
    steps: int = opt(400, "optimizer steps the schedule plans")
    lr: float = opt(1e-4, "peak learning rate")
    warmup: int = opt(20, "linear warm-up steps")
    schedule: str = opt("cosine", "cosine (to 10%) or wsd (constant, then linear to 0 over "
                        "the last 20%)", choices=("cosine", "wsd"))
    weight_decay: float = opt(0.0, "AdamW weight decay")
    lora_r: int = opt(0, "LoRA rank; 0 = full fine-tuning")
    lora_alpha: int = opt(32, "LoRA alpha")
    init_adapter: str | None = opt(None, "start LoRA and the mask row from an adapter export "
                                   "(same --lora-r), to continue an earlier adaptation")
    # curriculum b(s) = min(b_max, b0 * r^floor(max(0, s - s0) / D))
    block_max: int = opt(4, "curriculum: largest block size")
    block_start: int = opt(1, "curriculum: first block size b0")
    block_ratio: int = opt(2, "curriculum: growth factor r")
    block_warmup: int = opt(0, "curriculum: steps before growth starts")
    block_stage_steps: int | None = opt(None, "curriculum: steps per block size (default: "
                                        "growth ends at --block-growth-end)")
    block_growth_end: float = opt(0.6, "curriculum: fraction of the run where the last size "
                                  "starts")
    ar_weight: float = opt(0.5, "weight of the AR loss on the clean stream")
    training_mask: str = opt("context_causal", "block_causal: the SDAR / Fast-dLLM v2 mask "
                             "(ablation; needs --ar-weight 0)",
                             choices=("context_causal", "block_causal"))
    mask_schedule: str = opt("block", "masking rate t drawn per block or per sequence",
                             choices=("block", "sequence"))
    inverse_t_weight: bool = opt(False, "weight masked tokens by 1/t")
    complementary: bool = opt(False, "add a copy with the complementary mask")
    precision: str = opt("fp32", "bf16: autocast (weights stay fp32)", choices=("fp32", "bf16"))
    grad_checkpointing: bool = opt(False, "recompute activations in the backward pass")
    rope_scaling: str | dict | None = opt(None, "long-context stage: RoPE scaling beyond the "
                                          "base window, e.g. yarn:4")
    pack_documents: bool = opt(False, "pack text with document boundaries (no attention "
                               "across documents)")
    attention: str = opt("auto", "training attention: chunked keeps memory linear in "
                         "--seq-len", choices=("auto", "dense", "chunked"))
    attention_chunk: int = opt(512, "query chunk of the chunked training attention")
    seed: int = opt(0, "seed of data order, noise and initialisation")
    save_every: int = opt(50, "checkpoint every N steps")
    keep: int = opt(2, "checkpoints kept")

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
        for f in dataclasses.fields(self):  # the choices of its definition (opt)
            if f.metadata["choices"] and getattr(self, f.name) not in f.metadata["choices"]:
                raise ConfigError(f"invalid {f.name}={getattr(self, f.name)!r}: expected one "
                                  f"of {', '.join(f.metadata['choices'])}")
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
