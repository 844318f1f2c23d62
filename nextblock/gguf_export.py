"""Write a loaded model as a GGUF file, for llama.cpp and the tools built on it (AR mode).

    nextblock export --model default --gguf --out smollm2-nextblock.gguf [--gguf-type f16]
    write_gguf(nextblock.load(dtype="float32"), "model.gguf", kind="q8_0")

The model is written as llama.cpp's converter writes it (`convert_hf_to_gguf.py`, Llama
family): the same tensor names, q/k rows permuted into llama.cpp's RoPE layout, norms in
float32, a tied head left out, the byte-level BPE vocabulary with its merges. An adapted
model goes in with its LoRA merged and its mask token in the vocabulary (a control token,
never produced); its block-diffusion settings ride along as `nextblock.config` (JSON),
which llama.cpp ignores and `nextblock.load(file.gguf)` reads back. Hand-written because
neither gguf-py nor transformers ships a writer (llama.cpp's converter is a script of its
repository, not a package); the file is checked by reading it back with transformers'
own GGUF loader (tests/test_gguf_export.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError

KINDS = {"f32": 0, "f16": 1, "q8_0": 7}  # GGUF general.file_type (llama_ftype)
FAMILIES = ("llama",)  # what the tensor map and the permutation below are for
_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def tensor_name(hf: str) -> str:
    """model.layers.3.self_attn.q_proj.weight -> blk.3.attn_q.weight (llama.cpp names)."""
    top = {"model.embed_tokens.weight": "token_embd.weight",
           "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    parts = hf.split(".")
    if parts[:2] != ["model", "layers"] or ".".join(parts[3:-1]) not in _LAYER:
        raise ConfigError(f"GGUF export: no llama.cpp name for tensor {hf}")
    return f"blk.{parts[2]}.{_LAYER['.'.join(parts[3:-1])]}.{parts[-1]}"


def permute_rope(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved pairs (its converter's permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def write_gguf(lm, path: str | Path, kind: str = "f16", pre: str | None = None) -> Path:
    """Write `lm` (plain torch weights, LoRA merged) as GGUF; returns the path. `pre`:
    llama.cpp's pre-tokenizer name (default: the source GGUF's, else "default")."""
    import gguf

    cfg = lm.model.config
    if cfg.model_type not in FAMILIES:
        raise ConfigError(f"GGUF export supports the Llama family (SmolLM, Llama), not "
                          f"{cfg.model_type!r}")
    if kind not in KINDS:
        raise ConfigError(f"invalid gguf type {kind!r}: expected one of {', '.join(KINDS)}")
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    _add_hparams(writer, lm, kind)
    _add_tokenizer(writer, lm, pre or _source_pre(lm) or "default")
    writer.add_string("nextblock.config", json.dumps(lm.config.to_dict()))
    for name, tensor in _tensors(lm):
        _add_tensor(writer, name, tensor, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_hparams(w, lm, kind: str) -> None:
    cfg = lm.model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_name(Path(str(lm.name)).name)
    w.add_file_type(KINDS[kind])
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(lm.model.get_input_embeddings().weight.shape[0])
    w.add_rope_dimension_count(head_dim)


def _add_tokenizer(w, lm, pre: str) -> None:
    """The byte-level BPE vocabulary (gguf's "gpt2" model): tokens by id, their types
    (special tokens, the mask token among them, are control tokens), merges, ids."""
    import gguf

    tok = lm.tokenizer
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise ConfigError("GGUF export supports byte-level BPE tokenizers for now")
    n = lm.model.get_input_embeddings().weight.shape[0]
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    tokens = tok.convert_ids_to_tokens(list(range(n)))
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
             for i in range(n)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for add, value in ((w.add_bos_token_id, tok.bos_token_id),
                       (w.add_eos_token_id, tok.eos_token_id),
                       (w.add_pad_token_id, tok.pad_token_id),
                       (w.add_unk_token_id, tok.unk_token_id)):
        if value is not None:
            add(value)
    w.add_add_bos_token(False)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)


def _source_pre(lm) -> str | None:
    """The pre-tokenizer name of the GGUF file the model was read from, if any."""
    import gguf

    source = Path(getattr(lm.model.config, "_name_or_path", "") or "") / "source.json"
    if not source.exists():
        return None
    reader = gguf.GGUFReader(json.loads(source.read_text())["gguf"])
    field = reader.fields.get("tokenizer.ggml.pre")
    return None if field is None else bytes(field.parts[field.data[0]]).decode()


def _tensors(lm):
    """(GGUF name, float32 tensor) of every weight, q/k permuted, a tied head left out."""
    cfg = lm.model.config
    tied = cfg.tie_word_embeddings
    for name, t in lm.model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue
        t = t.detach().float().cpu()
        if name.endswith("q_proj.weight"):
            t = permute_rope(t, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            t = permute_rope(t, cfg.num_key_value_heads)
        yield tensor_name(name), t


def _add_tensor(w, name: str, t: torch.Tensor, kind: str) -> None:
    """Norms (1-D) stay float32; matrices in the asked type (q8_0: blocks of 32)."""
    import gguf

    data = t.numpy()
    if data.ndim == 1 or kind == "f32":
        w.add_tensor(name, data.astype(np.float32))
    elif kind == "f16":
        w.add_tensor(name, data.astype(np.float16))
    else:
        q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
