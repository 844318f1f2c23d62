"""Where the time of one decoding forward goes, per mode (torch profiler).

    python bench/profile_decode.py [--model default] [--dtype float32] [--max-new-tokens 32]
    python bench/profile_decode.py --compile    # the forward under torch.compile (slow start)
    python bench/profile_decode.py --dtype auto --loop   # the engine, and the loop's parts

For AR, block and verified decoding of one prompt, prints milliseconds per forward split into
linear layers (the weight-streaming matrix products), attention, every other ATen op, and
what is left of the wall time (Python, dispatch, the decode loop itself). The int8 engine
(`--dtype auto`, the CPU default) runs a whole forward in one C call the profiler cannot
split: for it the script times the engine's forward against the rest of the wall time
(the loop, masks, sampling), and bench/forward_cost.py times its matrix products alone;
with `--loop`, the rest is split further by the decode loop's functions (each timed around
its call: a function's time includes the calls it makes).
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
    p.add_argument("--loop", action="store_true",
                   help="with the engine: the loop's time by function (masks, choices, ...)")
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


# The decode loop's functions around the engine's forward, timed by --loop.
LOOP_PARTS = [("batch", "Batch", ("start_block", "still_needed", "emit", "drop")),
              ("rows", "Rows", ("mask", "reject")),
              ("policies", "BlockPolicy", ("candidates",)),
              ("sampling", "Sampler", ("pick", "argmax", "probs")),
              ("strategies", None, ("verify_draft", "filled_of"))]


def timed_calls(owners: list[tuple[object, str]], spent: dict, calls: dict) -> None:
    """Replace each owner.name by a wrapper adding its wall time to spent[name]."""
    for owner, name in owners:
        inner, label = getattr(owner, name), f"{getattr(owner, '__name__', owner)}.{name}"
        spent[label], calls[label] = 0.0, 0

        def wrapper(*a, _inner=inner, _label=label, **k):
            t0 = time.perf_counter()
            try:
                return _inner(*a, **k)
            finally:
                spent[_label] += time.perf_counter() - t0
                calls[_label] += 1
        setattr(owner, name, wrapper)


def engine_split(lm, args) -> None:
    """The int8 engine: each mode's wall time per forward, split into the engine's forward
    (one C call for the layers, one for the head, timed around the Python method) and the
    rest (the decode loop, masks, sampling); the best of three runs. With --loop, the best
    run's loop functions in ms per forward (and microseconds per call)."""
    import importlib

    eng = lm.model.nextblock_engine
    spent, calls = {}, {}
    timed_calls([(eng, "forward")], spent, calls)
    if args.loop:
        for mod, cls, names in LOOP_PARTS:
            m = importlib.import_module(f"nextblock.decoding.{mod}")
            timed_calls([(getattr(m, cls) if cls else m, n) for n in names], spent, calls)
    key = next(iter(spent))
    print(f"{'mode':<22}{'fwd':>5}{'tok/fwd':>9}{'engine':>9}{'rest':>8}{'total':>8}")
    for name, kw in MODES.items():
        lm.generate(args.prompt, max_new_tokens=8, **kw)  # warm-up
        best = None
        for _ in range(3):
            for k in spent:
                spent[k], calls[k] = 0.0, 0
            t0 = time.perf_counter()
            gen = lm.generate(args.prompt, max_new_tokens=args.max_new_tokens, **kw)
            run = (time.perf_counter() - t0, dict(spent), dict(calls))
            best = run if best is None or run[0] < best[0] else best
        f = gen.forwards
        wall, engine = best[0] * 1000 / f, best[1][key] * 1000 / f
        print(f"{name:<22}{f:>5}{gen.tokens_per_forward:>9.2f}{engine:>9.2f}"
              f"{wall - engine:>8.2f}{wall:>8.2f}")
        for label, sec in sorted(best[1].items(), key=lambda kv: -kv[1]):
            if label != key and best[2][label]:
                print(f"    {label:<34}{sec * 1000 / f:>7.3f} ms/fwd "
                      f"{sec * 1e6 / best[2][label]:>7.0f} us/call")


if __name__ == "__main__":
    main()
