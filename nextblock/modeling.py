"""Per-model glue: one forward pass over a Hugging Face causal LM's own modules, with an
explicit attention mask and an optional KV cache. It is the only forward nextblock uses:
training ([noisy | clean], no cache) and inference (prefill, denoise peek, commit) differ
only in the mask and in whether the cache advances, which is what makes them agree exactly.

Supported families share one layout (RMSNorm, RoPE, GQA, gated MLP): Llama (SmolLM),
Mistral, Qwen2 (q/k/v bias) and Qwen3 (q/k RMSNorm). Projections are called as modules, so
LoRA-wrapped layers (peft) work unchanged.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from . import masks
from .cache import KVCache

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def decoder(model):
    """The inner decoder (embed_tokens, layers, norm, rotary_emb) of a CausalLM or PeftModel."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def lm_head(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.lm_head


def _attention(attn, x, cos, sin, mask, cache: KVCache | None, layer: int):
    B, T, _ = x.shape
    shape = (B, T, -1, attn.head_dim)
    q = attn.q_proj(x).view(shape)
    k = attn.k_proj(x).view(shape)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    if hasattr(attn, "q_norm"):  # Qwen3
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    if cache is not None:
        k, v = cache.write(layer, k, v)
    gqa = q.shape[1] != k.shape[1]
    if isinstance(mask, torch.Tensor) or mask is None:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling,
                                           enable_gqa=gqa)
    elif isinstance(mask, masks.Chunked):  # long training sequences
        o = _chunked_attention(q, k, v, mask, attn.scaling, gqa)
    else:  # a flex-attention BlockMask (GPU)
        from torch.nn.attention.flex_attention import flex_attention
        o = flex_attention(q, k, v, block_mask=mask, scale=attn.scaling, enable_gqa=gqa)
    return attn.o_proj(o.transpose(1, 2).reshape(B, T, -1))


def _chunked_attention(q, k, v, mask: "masks.Chunked", scale: float, gqa: bool):
    """Attention one query chunk at a time over the keys that chunk may see. Under autograd
    each chunk is recomputed in the backward pass instead of keeping its mask: what stays
    in memory is linear in the sequence length."""

    def chunk(i, q, k, v):
        q0, q1, kv = mask.chunks[i]
        return F.scaled_dot_product_attention(
            q[:, :, q0:q1], k.index_select(2, kv), v.index_select(2, kv),
            attn_mask=mask.mask(i), scale=scale, enable_gqa=gqa)

    grad = torch.is_grad_enabled() and q.requires_grad
    return torch.cat([
        torch.utils.checkpoint.checkpoint(chunk, i, q, k, v, use_reentrant=False) if grad
        else chunk(i, q, k, v) for i in range(len(mask.chunks))], dim=2)


def forward(model, input_ids: torch.Tensor, positions: torch.Tensor, mask,
            cache: KVCache | None = None, logits_from: int = 0,
            checkpoint: bool = False, hidden: bool = False) -> torch.Tensor:
    """Logits for positions [logits_from, T) of `input_ids` [B, T] (with hidden=True the
    final-normed hidden states instead, for callers that need logits at a few positions).

    positions: [B, T] RoPE position ids; mask: bool [B, 1, T, K] (True = attend), where
    K = cache.length + T with a cache, else T; or, without a cache, a masks.Chunked (long
    training sequences) or a flex BlockMask. With a cache the chunk's keys/values are
    written after the stored ones; call `cache.commit(T)` to keep them.

    A model that carries an engine (`model.nextblock_engine`, attached by `nextblock.load` on
    the CPU) runs inference forwards there: same contract, int8 weights, one C call.
    """
    engine = getattr(model, "nextblock_engine", None)
    if engine is not None and not torch.is_grad_enabled() and (
            mask is None or isinstance(mask, torch.Tensor)):
        return engine.forward(input_ids, positions, mask, cache, logits_from, hidden)
    dec = decoder(model)
    h = dec.embed_tokens(input_ids)
    cos, sin = dec.rotary_emb(h, positions)
    for i, layer in enumerate(dec.layers):
        if checkpoint and torch.is_grad_enabled():
            h = torch.utils.checkpoint.checkpoint(
                _layer, layer, h, cos, sin, mask, cache, i, use_reentrant=False)
        else:
            h = _layer(layer, h, cos, sin, mask, cache, i)
    h = dec.norm(h[:, logits_from:])
    return h if hidden else lm_head(model)(h)


def _layer(layer, h, cos, sin, mask, cache, i):
    sharded = getattr(layer, "nextblock_layer", None)  # FSDP: see shard_layer_calls
    if sharded is not None:
        return sharded(h, cos, sin, mask, cache, i)
    return layer_forward(layer, h, cos, sin, mask, cache, i)


def layer_forward(layer, h, cos, sin, mask, cache, i):
    """One decoder layer, from its parts (this forward's masks and cache, not HF's)."""
    h = h + _attention(layer.self_attn, layer.input_layernorm(h), cos, sin, mask, cache, i)
    return h + layer.mlp(layer.post_attention_layernorm(h))


def shard_layer_calls(model) -> None:
    """FSDP2 gathers a sharded layer's weights in hooks on `layer(...)`, which `forward`
    never calls (it calls the layer's parts): register `layer_forward` as an FSDP forward
    method of every sharded layer, so the gather / free / gradient reduce happen there."""
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    for layer in decoder(model).layers:
        if isinstance(layer, FSDPModule) and not hasattr(layer, "nextblock_layer"):
            layer.nextblock_layer = types.MethodType(layer_forward, layer)
            register_fsdp_forward_method(layer, "nextblock_layer")


def context_limit(config) -> int:
    """Longest sequence the model attends over exactly (positions, sliding window)."""
    limit = config.max_position_embeddings
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and (
            "sliding_attention" in (getattr(config, "layer_types", None) or ["sliding_attention"])):
        limit = min(limit, window)
    return limit
