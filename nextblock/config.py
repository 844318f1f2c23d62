"""Settings: the model's block-diffusion settings (persisted as nextblock.json) and the
decoding settings of one generate call (validated before any work starts).

    cfg = BlockConfig.load("model_dir")          # reads model_dir/nextblock.json
    s = DecodeSettings(mode="block", block_size=4, threshold=0.9).validated()
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

CONFIG_NAME = "nextblock.json"
MODES = ("ar", "block", "verified")
CONFIDENCE_MEASURES = ("prob", "margin", "neg_entropy")


@dataclass
class DecodeSettings:
    """How to decode. `mode="ar"` is block decoding with block size 1 (exact AR).

    block: each block of `block_size` tokens starts with its anchor (chosen by the previous
    commit pass) and `block_size - 1` masks; `sub_block` splits it into parts decoded left to
    right; every step unmasks the most confident masked position of the current sub-block
    plus every one whose confidence (`prob`, `margin` = top1 - top2 probability, or
    `neg_entropy` = -H, always <= 0) exceeds `threshold`.

    verified: blocks are drafted the same way (greedy drafts), then the commit pass checks
    them against the causal model: the longest agreeing prefix is kept, the first
    disagreement is replaced by the causal choice. Output equals AR (greedy: the same tokens;
    sampled: the same distribution, by the speculative-sampling acceptance rule).

    fused_commit: the forward that commits a block also runs the next block's first denoise
    step, anchored on the guess the last denoise step made; kept only when the commit
    confirms the guess. Output is identical either way; it saves forwards.

    prefill_chunk: a long prompt is prefilled in chunks of this many tokens, so its memory
    is bounded (a [chunk, context] mask and chunk-sized activations) whatever its length.
    """

    mode: str = "block"
    max_new_tokens: int = 128
    block_size: int = 32
    sub_block: int | None = None  # None: the whole block is one sub-block
    threshold: float = 0.9
    confidence: str = "prob"
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # HF semantics: >1 discourages tokens already present
    seed: int | None = None
    stop: tuple[str, ...] = ()
    fused_commit: bool = True
    prefill_chunk: int = 2048  # the prompt is prefilled this many tokens per forward

    @property
    def effective_block_size(self) -> int:
        return 1 if self.mode == "ar" else self.block_size

    @property
    def effective_sub_block(self) -> int:
        b = self.effective_block_size
        return b if self.sub_block is None else min(b, self.sub_block)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **changes) -> "DecodeSettings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def validated(self) -> "DecodeSettings":
        """Return self after checking every field; raise ConfigError naming the bad one."""

        def bad(name, why):
            raise ConfigError(f"invalid {name}={getattr(self, name)!r}: {why}")

        if self.mode not in MODES:
            bad("mode", f"expected one of {', '.join(MODES)}")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            bad("max_new_tokens", "must be an integer >= 1")
        if not _is_int(self.block_size) or self.block_size < 1:
            bad("block_size", "must be an integer >= 1")
        if self.sub_block is not None:
            if not _is_int(self.sub_block) or self.sub_block < 1:
                bad("sub_block", "must be an integer >= 1")
            if self.block_size % self.sub_block:
                bad("sub_block", f"must divide block_size={self.block_size}")
        if not _is_num(self.threshold) or math.isnan(self.threshold):
            bad("threshold", "must be a number")
        if self.confidence not in CONFIDENCE_MEASURES:
            bad("confidence", f"expected one of {', '.join(CONFIDENCE_MEASURES)}")
        if not _is_num(self.temperature) or not (0.0 <= self.temperature < math.inf):
            bad("temperature", "must be a finite number >= 0 (0 means greedy)")
        if not _is_num(self.top_p) or not (0.0 < self.top_p <= 1.0):
            bad("top_p", "must be in (0, 1]")
        if not _is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "must be an integer >= 0 (0 means off)")
        if not _is_num(self.repetition_penalty) or not (0.0 < self.repetition_penalty < math.inf):
            bad("repetition_penalty", "must be a finite number > 0 (1 means off)")
        if self.seed is not None and not _is_int(self.seed):
            bad("seed", "must be an integer")
        if not _is_int(self.prefill_chunk) or self.prefill_chunk < 1:
            bad("prefill_chunk", "must be an integer >= 1")
        if not isinstance(self.fused_commit, bool):
            bad("fused_commit", "must be true or false")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "must be non-empty strings")
        return self


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class BlockConfig:
    """A model's block-diffusion settings, stored as nextblock.json beside its weights.

    `shift=1`: the output at position i-1 predicts token i (AR convention; the block's first
    token, the anchor, is never diffused). `trained_block_sizes` lists what the adaptation
    trained on; `[1]` means a plain AR model, whose block mode gives poor text.
    """

    mask_token_id: int
    mask_token: str = "<|mask|>"
    block_size: int = 32
    shift: int = 1
    trained_block_sizes: list[int] = field(default_factory=lambda: [1])
    decoding: dict = field(default_factory=dict)  # recommended DecodeSettings fields
    base_model: str | None = None
    rope_scaling: dict | None = None  # RoPE parameters a long-context stage trained with
    # how committed blocks are stored: "context_causal" (causally, the system's choice) or
    # "block_causal" (each block bidirectional, for a model trained with that mask)
    attention: str = "context_causal"
    version: int = 1

    def recommended(self) -> DecodeSettings:
        """Default decoding settings for this model: its recommendation over the defaults."""
        fields = {f.name for f in dataclasses.fields(DecodeSettings)}
        known = {k: v for k, v in self.decoding.items() if k in fields}
        s = DecodeSettings(block_size=self.block_size, **known)
        return s

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "BlockConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}")
        if "mask_token_id" not in d:
            raise ConfigError(f"{source}: missing required field mask_token_id")
        cfg = cls(**d)
        if not _is_int(cfg.mask_token_id) or cfg.mask_token_id < 0:
            raise ConfigError(f"{source}: mask_token_id must be a non-negative integer")
        if not _is_int(cfg.block_size) or cfg.block_size < 1:
            raise ConfigError(f"{source}: block_size must be an integer >= 1")
        if cfg.shift != 1:
            raise ConfigError(f"{source}: shift={cfg.shift!r} is not supported (only 1)")
        if cfg.attention not in ("context_causal", "block_causal"):
            raise ConfigError(f"{source}: attention must be 'context_causal' or 'block_causal'")
        if cfg.rope_scaling is not None and not isinstance(cfg.rope_scaling, dict):
            raise ConfigError(f"{source}: rope_scaling must be an object of RoPE parameters")
        if not isinstance(cfg.decoding, dict):
            raise ConfigError(f"{source}: decoding must be an object of decoding settings")
        bad = sorted(set(cfg.decoding) - {f.name for f in dataclasses.fields(DecodeSettings)})
        if bad:
            raise ConfigError(f"{source}: unknown decoding setting(s) {', '.join(bad)}")
        try:
            cfg.recommended().validated()
        except ConfigError as e:
            raise ConfigError(f"{source}: recommended decoding settings: {e}") from None
        return cfg

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "BlockConfig":
        path = Path(directory) / CONFIG_NAME
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: malformed JSON ({e})") from None
        return cls.from_dict(data, source=str(path))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write nextblock.json atomically (temporary file, then rename)."""
        path = Path(directory) / CONFIG_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path


def cache_dir() -> Path:
    """Where dequantised GGUF models and the compiled engine are kept: $NEXTBLOCK_CACHE,
    else $XDG_CACHE_HOME/nextblock (~/.cache/nextblock)."""
    root = os.environ.get("NEXTBLOCK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nextblock")
    return Path(root)
