"""Where the time of one decoding forward goes, per mode (torch profiler).

    python bench/profile_decode.py [--model default] [--dtype float32] [--max-new-tokens 32]
    python bench/profile_decode.py --compile    # the forward under torch.compile (slow start)

For AR, block and verified decoding of one prompt, prints milliseconds per forward split into
linear layers (the weight-streaming matrix products), attention, every other ATen op, and
what is left of the wall time (Python, dispatch, the decode loop itself). The int8 engine
(`--dtype auto`, the CPU default) runs a whole forward in one C call the profiler cannot
split: for it the script times the engine's forward against the rest of the wall time
(the loop, masks, sampling), and bench/forward_cost.py times its matrix products alone.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import nextblock

LINEAR = ("aten::mm", "aten::addmm", "aten::bmm", "quantized::linear_dynamic")
ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu",
             "aten::_scaled_dot_product_attention_math")
MODES = {"ar": dict(mode="ar"),
         "block B=4 thr=0.9": dict(mode="block", block_size=4, threshold=0.9),
         "verified B=4 thr=0": dict(mode="verified", block_size=4, threshold=0.0)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "auto", "int8"])
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--prompt", default="Explain in a few sentences why the sky is blue.")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile(dynamic=True) the model forward the loop calls")
    args = p.parse_args(argv)
    lm = nextblock.load(args.model, dtype=args.dtype)
    if args.compile:
        from nextblock.decoding import rows

        rows.forward = torch.compile(rows.forward, dynamic=True)
        t0 = time.perf_counter()
        for kw in MODES.values():
            lm.generate(args.prompt, max_new_tokens=8, **kw)
        print(f"torch.compile warm-up (all shapes of the three modes): "
              f"{time.perf_counter() - t0:.0f} s")
    print(f"{lm.name}{' int8' if lm.quantization else ' float32'}, "
          f"{torch.get_num_threads()} threads; ms per forward")
    if getattr(lm.model, "nextblock_engine", None) is not None:
        return engine_split(lm, args)
    print(f"{'mode':<22}{'fwd':>5}{'tok/fwd':>9}{'linear':>9}{'attn':>8}{'other ops':>11}"
          f"{'rest':>8}{'total':>8}")
    for name, kw in MODES.items():
        lm.generate(args.prompt, max_new_tokens=8, **kw)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            gen = lm.generate(args.prompt, max_new_tokens=args.max_new_tokens, **kw)
            wall = (time.perf_counter() - t0) * 1000
        linear = attn = other = 0.0
        for e in prof.key_averages():
            ms = e.self_cpu_time_total / 1000
            if e.key in LINEAR:
                linear += ms
            elif e.key in ATTENTION:
                attn += ms
            elif e.key.startswith(("aten::", "quantized::")):
                other += ms
        f = gen.forwards
        print(f"{name:<22}{f:>5}{gen.tokens_per_forward:>9.2f}{linear / f:>9.1f}{attn / f:>8.1f}{other / f:>11.1f}"
              f"{(wall - linear - attn - other) / f:>8.1f}{wall / f:>8.1f}")


def engine_split(lm, args) -> None:
    """The int8 engine: each mode's wall time per forward, split into the engine's forward
    (one C call for the layers, one for the head, timed around the Python method) and the
    rest (the decode loop, masks, sampling); the best of three runs."""
    eng = lm.model.nextblock_engine
    inner, spent = eng.forward, [0.0]

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t0

    eng.forward = timed
    print(f"{'mode':<22}{'fwd':>5}{'tok/fwd':>9}{'engine':>9}{'rest':>8}{'total':>8}")
    for name, kw in MODES.items():
        lm.generate(args.prompt, max_new_tokens=8, **kw)  # warm-up
        best = None
        for _ in range(3):
            spent[0], t0 = 0.0, time.perf_counter()
            gen = lm.generate(args.prompt, max_new_tokens=args.max_new_tokens, **kw)
            run = (time.perf_counter() - t0, spent[0])
            best = run if best is None or run[0] < best[0] else best
        f = gen.forwards
        wall, engine = best[0] * 1000 / f, best[1] * 1000 / f
        print(f"{name:<22}{f:>5}{gen.tokens_per_forward:>9.2f}{engine:>9.2f}"
              f"{wall - engine:>8.2f}{wall:>8.2f}")


if __name__ == "__main__":
    main()
