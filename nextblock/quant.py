"""int8 linear layers for CPU decoding: weights int8 per output channel, activations
quantized per token on the fly (W8A8, dynamic).

    lm = nextblock.load("default", quantize="int8")   # or --quantize int8

Why not `torch.ao.quantization.quantize_dynamic` as is: it quantizes activations with one
scale for the whole input, so a token's result depends on the other tokens of the chunk, and
verified decoding (whose 4-token verify pass must reproduce 1-token AR passes) stops being
exact. Here every row is scaled to [-1, 1] by its own absolute maximum, and a probe row
holding -1 and +1 pins fbgemm's per-tensor range to exactly [-1, 1]: a row's quantization,
and therefore its output, depends on that row alone, whatever shares the batch.

Why int8 at all: a decode step on a CPU streams every weight from memory once; int8 reads a
quarter of float32's bytes and fbgemm's kernel stays fast for multi-token blocks, where the
float16/bfloat16 kernels of this class of CPU do not (`bench/matmul_rows.py`).
"""

from __future__ import annotations

import warnings

import torch


class Int8Linear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
        with warnings.catch_warnings():  # torch's quantized-tensor deprecation notices
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(w, scales.double(), torch.zeros_like(
                scales, dtype=torch.long), axis=0, dtype=torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qw, None)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else torch.nn.Parameter(
            linear.bias.detach().float(), requires_grad=False)
        probe = torch.zeros(1, self.in_features)
        probe[0, 0], probe[0, -1] = -1.0, 1.0
        self.register_buffer("probe", probe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features).float()
        s = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        y = torch.ops.quantized.linear_dynamic(torch.cat([x / s, self.probe]), self._packed,
                                               True)[:-1] * s
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every nn.Linear (the LM head included) by Int8Linear, in place."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        from .errors import ConfigError

        raise ConfigError("quantize='int8' needs torch's fbgemm engine (x86 CPUs)")
    torch.backends.quantized.engine = "fbgemm"
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(module, child_name, Int8Linear(child))
    return model
