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


SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)  # what torch.Generator.manual_seed takes


def setting(default, help: str, *, choices=None, ge=None, gt=None, le=None, lt=None):
    """A DecodeSettings field with its help text and bounds: the one definition the CLI
    flags, the server's request schema and `validated()` are all built from."""
    return field(default=default, metadata=dict(help=help, choices=choices, ge=ge, gt=gt,
                                                le=le, lt=lt))


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

    mode: str = setting("block", "ar (token by token), block (parallel denoising) or "
                        "verified (block drafts checked by AR: AR's output)", choices=MODES)
    max_new_tokens: int = setting(128, "tokens to generate at most", ge=1)
    block_size: int = setting(32, "tokens per block: the anchor, then masks", ge=1, le=256)
    sub_block: int | None = setting(None, "parts of a block decoded left to right (must "
                                    "divide block_size; none: the whole block)", ge=1)
    threshold: float = setting(0.9, "unmask every position whose confidence exceeds it "
                               "(and always the most confident)")
    confidence: str = setting("prob", "confidence measure", choices=CONFIDENCE_MEASURES)
    temperature: float = setting(0.0, "sampling temperature (0: greedy)", ge=0.0, le=2.0)
    top_p: float = setting(1.0, "nucleus sampling: the smallest set with this mass",
                           gt=0.0, le=1.0)
    top_k: int = setting(0, "sample among the k most likely (0: off)", ge=0)
    repetition_penalty: float = setting(1.0, "HF semantics: > 1 discourages tokens already "
                                        "present (1: off)", gt=0.0, lt=math.inf)
    seed: int | None = setting(None, "sampling seed", ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: tuple[str, ...] = setting((), "stop strings")
    fused_commit: bool = setting(True, "run each commit together with the next block's "
                                 "first denoise step (same output, fewer forwards)")
    prefill_chunk: int = setting(2048, "prefill long prompts this many tokens per forward "
                                 "(bounded memory)", ge=1)

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
        """A copy with `changes`; None leaves a field as it is, except for the fields whose
        value may be None (sub_block, seed), which None resets."""
        optional = {f.name for f in dataclasses.fields(self) if f.default is None}
        return dataclasses.replace(self, **{k: v for k, v in changes.items()
                                            if v is not None or k in optional})

    def validated(self) -> "DecodeSettings":
        """Return self after checking every field against its definition; raise
        ConfigError naming the bad one."""
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop) if isinstance(self.stop, (list, tuple)) else self.stop
        for f in dataclasses.fields(self):
            why = _invalid(f, getattr(self, f.name))
            if why:
                raise ConfigError(f"invalid {f.name}={getattr(self, f.name)!r}: {why}")
        if self.sub_block is not None and self.block_size % self.sub_block:
            raise ConfigError(f"invalid sub_block={self.sub_block!r}: must divide "
                              f"block_size={self.block_size}")
        return self


def field_kind(f) -> str:
    """A settings field's type without its `| None`: "int", "float", "str", "bool",
    "tuple[str, ...]", "list[str]" (annotations are strings here: postponed evaluation)."""
    return f.type.split(" |")[0]


def _invalid(f, v) -> str | None:
    """Why value v does not fit DecodeSettings field f (type, choices, bounds), or None."""
    m, kind = f.metadata, field_kind(f)
    if v is None and f.default is None:
        return None
    if kind == "tuple[str, ...]":
        ok = isinstance(v, tuple) and all(isinstance(s, str) and s for s in v)
        return None if ok else "must be non-empty strings"
    checks = {"int": (_is_int, "an integer"), "float": (_is_num, "a number"),
              "bool": (lambda x: isinstance(x, bool), "true or false"),
              "str": (lambda x: isinstance(x, str), "a string")}
    is_kind, what = checks[kind]
    if not is_kind(v) or (kind == "float" and math.isnan(v)):
        return f"must be {what}"
    if m["choices"] and v not in m["choices"]:
        return f"expected one of {', '.join(m['choices'])}"
    for key, ok, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                          ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
        if m[key] is not None and not ok(v, m[key]):
            return f"must be {word} {m[key]}" + (f" ({m['help']})" if kind != "str" else "")
    return None


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
        # the trained block size unless the recommendation names another (a trained one)
        return DecodeSettings(**{"block_size": self.block_size, **known})

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
