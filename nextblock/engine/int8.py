"""The int8 CPU engine: a loaded float model's weights packed once, forwards in one C call.

    engine = Int8Engine(model)            # int8 in groups of 64, q/k/v and gate/up fused
    logits = engine.forward(ids, positions, mask, cache)   # modeling.forward's contract

`nextblock.load()` attaches one to the model on the CPU by default (`model.nextblock_engine`)
and `modeling.forward` hands inference forwards to it; `dtype="float32"` keeps the float32
reference path. Training never uses it (it needs gradients, and its weights are a copy made
at load time).

What it guarantees (tests/engine): a row's logits depend on that row's tokens and on the
keys it attends to, not on how many rows share the pass, bit for bit; so verified decoding
gives exactly the tokens of AR decoding with the same engine. Against float32 it differs by
int8 rounding (measured by bench/int8_fidelity.py; checked in tests/test_default_model.py).
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, Structure, byref, c_float, c_int, c_long, c_void_p

import torch

from ..cache import KVCache
from .build import engine_library


class _QLinear(Structure):
    _fields_ = [("n", c_int), ("k", c_int), ("w", c_void_p), ("scale", c_void_p),
                ("comp", c_void_p), ("bias", c_void_p)]


class _Layer(Structure):
    _fields_ = [("qkv", _QLinear), ("o", _QLinear), ("gate_up", _QLinear), ("down", _QLinear),
                ("ln1", c_void_p), ("ln2", c_void_p), ("q_norm", c_void_p), ("k_norm", c_void_p),
                ("q_off", c_int), ("k_off", c_int), ("v_off", c_int), ("up_off", c_int)]


class _Model(Structure):
    _fields_ = [("n_layers", c_int), ("d", c_int), ("n_heads", c_int), ("n_kv", c_int),
                ("hd", c_int), ("ffn", c_int), ("eps", c_float), ("attn_scale", c_float),
                ("layers", POINTER(_Layer)), ("norm", c_void_p), ("head", _QLinear)]


def as_ptr(t: torch.Tensor | None):
    """A tensor's data as a C pointer (None: NULL); the caller keeps the tensor alive."""
    return None if t is None else c_void_p(t.data_ptr())


GROUP = 64  # inputs per quantisation group (NB_GROUP in int8_engine.c)
MAX_GQA = 16  # query heads per key/value head (NB_MAXG in int8_engine.c)


def quantize_groups(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel and group of GROUP inputs (w's width a multiple of
    GROUP): w ~ q * scale[:, k // GROUP], q in [-127, 127]."""
    n, k = w.shape
    g = w.detach().float().view(n, k // GROUP, GROUP)
    scale = g.abs().amax(dim=2) / 127.0
    q = torch.where(scale[..., None] > 0, g / scale.clamp_min(1e-30)[..., None], 0.0)
    return q.round().clamp(-127, 127).to(torch.int8).view(n, k), scale


def unsupported_reason(model) -> str | None:
    """Why the engine cannot run this model (None: it can)."""
    from ..modeling import SUPPORTED_FAMILIES

    cfg, p = model.config, next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        return "it needs float32 weights on the CPU"
    if cfg.model_type not in SUPPORTED_FAMILIES:
        return f"model type {cfg.model_type!r} is not one of {', '.join(SUPPORTED_FAMILIES)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} (the engine implements silu)"
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if heads % kv or heads // kv > MAX_GQA:
        return f"{heads} query heads over {kv} key/value heads (at most {MAX_GQA} a group)"
    return None


class Int8Engine:
    ISAS = ("portable", "avx2", "avx512_vnni")  # nb_isa()'s codes

    def __init__(self, model, isa: str | None = None):
        """isa: the kernel set to build ("portable", "avx2", "avx512_vnni"; build.compile_flags);
        default the best this CPU has."""
        from ..modeling import decoder, lm_head

        self.lib = engine_library(isa)
        self.isa = self.ISAS[self.lib.nb_isa()]
        self._keep: list[torch.Tensor] = []  # every buffer a C pointer refers to
        dec, cfg = decoder(model), model.config
        self.rotary, self.embed = dec.rotary_emb, dec.embed_tokens.weight.detach().float()
        self.vocab = lm_head(model).weight.shape[0]
        attn0 = dec.layers[0].self_attn
        self.hd, self.n_kv = attn0.head_dim, cfg.num_key_value_heads
        layers = [self._layer(layer) for layer in dec.layers]
        self._layers = (_Layer * len(layers))(*layers)
        self.m = _Model(len(layers), cfg.hidden_size, cfg.num_attention_heads, self.n_kv,
                        self.hd, cfg.intermediate_size, float(cfg.rms_norm_eps),
                        float(attn0.scaling), self._layers, self._vec(dec.norm.weight),
                        self._linear([lm_head(model)])[0])
        self.lib.nb_scratch_floats.restype = ctypes.c_long
        self._scratch = torch.empty(0)  # grown, never shrunk: no allocation per forward
        self._head_q, self._head_sx = torch.empty(0, dtype=torch.uint8), torch.empty(0)

    # -- packing ------------------------------------------------------------------------
    def _vec(self, t):
        if t is None:
            return None
        t = t.detach().float().contiguous()
        self._keep.append(t)
        return t.data_ptr()

    def _linear(self, mods) -> tuple[_QLinear, list[int]]:
        """Pack linears sharing an input into one, each part padded to 32 output rows."""
        k = mods[0].weight.shape[1]
        kp, sizes = -(-k // GROUP) * GROUP, [-(-m.weight.shape[0] // 32) * 32 for m in mods]
        n = sum(sizes)
        w, bias = torch.zeros(n, kp), torch.zeros(n)
        offsets = [sum(sizes[:i]) for i in range(len(mods))]
        for off, m in zip(offsets, mods):
            w[off:off + m.weight.shape[0], :k] = m.weight.detach().float()
            if m.bias is not None:
                bias[off:off + m.weight.shape[0]] = m.bias.detach().float()
        q, scale = quantize_groups(w)
        comp = (128 * q.to(torch.int32).view(n, kp // GROUP, GROUP).sum(dim=2)).to(torch.int32)
        # [n, groups] -> [n / 16, groups, 16]: one vector load per block and group
        scale, comp = (t.view(n // 16, 16, -1).transpose(1, 2).contiguous() for t in (scale, comp))
        packed, q = torch.empty(n * kp, dtype=torch.int8), q.contiguous()
        self.lib.nb_pack(as_ptr(q), c_int(n), c_int(kp), c_int(n), c_int(kp), as_ptr(packed))
        self._keep += [packed, scale, comp, bias]
        has_bias = any(m.bias is not None for m in mods)
        ql = _QLinear(n, kp, packed.data_ptr(), scale.data_ptr(), comp.data_ptr(),
                      bias.data_ptr() if has_bias else None)
        return ql, offsets

    def _layer(self, layer) -> _Layer:
        a, mlp = layer.self_attn, layer.mlp
        qkv, (q_off, k_off, v_off) = self._linear([a.q_proj, a.k_proj, a.v_proj])
        gate_up, (_, up_off) = self._linear([mlp.gate_proj, mlp.up_proj])
        qn, kn = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
        return _Layer(qkv, self._linear([a.o_proj])[0], gate_up, self._linear([mlp.down_proj])[0],
                      self._vec(layer.input_layernorm.weight),
                      self._vec(layer.post_attention_layernorm.weight),
                      self._vec(qn.weight if qn is not None else None),
                      self._vec(kn.weight if kn is not None else None),
                      q_off, k_off, v_off, up_off)

    # -- running -------------------------------------------------------------------------
    def _scratch_for(self, M: int, K: int, threads: int) -> torch.Tensor:
        # sized in C, where the buffers are carved out
        need = self.lib.nb_scratch_floats(byref(self.m), c_int(M), c_int(K), c_int(threads))
        if self._scratch.numel() < need:
            self._scratch = torch.empty(need)
        return self._scratch

    def argmax(self, logits: torch.Tensor, exclude: int = -1) -> torch.Tensor:
        """`logits.argmax(-1)` with column `exclude` never chosen (the same index: the first
        largest; finite logits), in C: greedy decoding's choice without torch's slower
        argmax over the vocabulary (nb_argmax)."""
        x = logits if logits.dtype == torch.float32 else logits.float()
        rows = x.reshape(-1, x.shape[-1])  # a view when the rows are evenly strided (the
        if rows.stride(-1) != 1:           # engine's logits: a slice of padded rows): no copy
            rows = rows.contiguous()
        out = torch.empty(x.shape[:-1], dtype=torch.long)
        self.lib.nb_argmax(as_ptr(rows), c_int(rows.shape[0]), c_int(rows.shape[1]),
                           c_long(rows.stride(0)), c_int(exclude), as_ptr(out))
        return out

    @torch.no_grad()
    def forward(self, input_ids, positions, mask, cache: KVCache | None = None,
                logits_from: int = 0, hidden: bool = False) -> torch.Tensor:
        B, T = input_ids.shape
        if cache is None:  # a one-off pass (scoring): a cache of its own, never kept
            cache = KVCache(self.m.n_layers, B, self.n_kv, self.hd, T)
        K = cache.length + T
        if K > cache.max_len:
            raise RuntimeError(f"KV cache overflow: {K} > {cache.max_len} slots")
        k = cache.k
        if not (k.dtype == torch.float32 and k[0].is_contiguous() and k.stride() == cache.v.stride()):
            raise RuntimeError("the int8 engine needs a float32 KV cache, each layer contiguous")
        mask = (torch.ones(B, T, K, dtype=torch.bool) if mask is None
                else mask.expand(B, 1, T, K).reshape(B, T, K).contiguous())
        h = self.embed[input_ids.reshape(-1)]
        cos, sin = (t.float().contiguous() for t in self.rotary(h[None], positions))
        threads = torch.get_num_threads()
        scratch = self._scratch_for(B * T, K, threads)
        self.lib.nb_layers(byref(self.m), as_ptr(h), c_int(B), c_int(T), as_ptr(cos), as_ptr(sin),
                           as_ptr(mask), c_int(K), as_ptr(cache.k), as_ptr(cache.v),
                           c_int(cache.length), c_int(cache.max_len), c_long(k.stride(0)),
                           as_ptr(scratch),
                           c_int(threads))
        rows = h.view(B, T, -1)[:, logits_from:].contiguous()
        M, d = rows.shape[0] * rows.shape[1], rows.shape[2]
        normed = torch.empty(M, d)
        if self._head_q.numel() < M * self.m.head.k:
            self._head_q = torch.empty(M * self.m.head.k, dtype=torch.uint8)
            self._head_sx = torch.empty(M * self.m.head.k // GROUP)
        q, sx = self._head_q, self._head_sx
        logits = None if hidden else torch.empty(M, self.m.head.n)
        self.lib.nb_head(byref(self.m), as_ptr(rows), c_int(M), as_ptr(normed), as_ptr(q),
                         as_ptr(sx), as_ptr(logits), c_int(threads))
        if hidden:
            return normed.view(B, -1, d)
        logits = logits.view(B, -1, self.m.head.n)
        return logits if self.m.head.n == self.vocab else logits[..., :self.vocab]
