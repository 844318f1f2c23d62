"""Where an int8 engine forward's time goes, phase by phase, by query length T.

    python bench/engine_phases.py [--lengths 1,4,8,16] [--context 128] [--threads 2]
        [--calls 200] [--isa avx2]

Builds the engine with -DNB_PROFILE (int8_engine.c's MARK points: thread 0 adds the wall
time since the previous mark to each phase, after the phase's barrier) and runs the same
forwards as bench/forward_cost.py. Prints milliseconds per forward for each phase summed
over the layers (the norms and quantisation before a product, the product itself, RoPE
and the cache write, attention, the head), the C total, and what the Python side of a
forward costs on top (embedding, RoPE tables, mask, buffers). The marks cost a few
microseconds per forward; compare phases within one run, not with forward_cost.py.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import nextblock
from nextblock.engine.build import SOURCE, compile_flags, compiler

sys.path.insert(0, str(Path(__file__).parent))
import forward_cost  # noqa: E402

PHASES = ["norm+quant (qkv)", "qkv product", "rope+cache", "attention", "quant (o)",
          "o product", "residual+norm+quant (up)", "gate/up product", "silu+quant (down)",
          "down product", "head norm+quant", "head product"]


def profiled_library(isa: str | None) -> ctypes.CDLL:
    out = Path(tempfile.mkdtemp()) / "int8_engine_profiled.so"
    subprocess.run([compiler(), *compile_flags(isa), "-DNB_PROFILE", str(SOURCE), "-o",
                    str(out), "-lm"], check=True)
    lib = ctypes.CDLL(str(out))
    lib.nb_scratch_floats.restype = ctypes.c_long
    return lib


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--lengths", default="1,4,8,16")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=200, help="forwards timed per length")
    p.add_argument("--isa", default=None, help="kernel set (default: the best this CPU has)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    lm = nextblock.load(args.model, dtype="int8")
    engine = lm.model.nextblock_engine
    engine.lib = lib = profiled_library(args.isa)
    buf = (ctypes.c_double * len(PHASES))()
    table = {}
    for T in lengths:
        fwd = forward_cost.forward_fn(lm, T, args.context)
        for _ in range(20):
            fwd()
        lib.nb_phases(buf)
        t0 = time.perf_counter()
        for _ in range(args.calls):
            fwd()
        wall = (time.perf_counter() - t0) / args.calls * 1000
        lib.nb_phases(buf)
        table[T] = [x / args.calls * 1000 for x in buf] + [wall]
    print(f"int8 kernels: {engine.isa}; {args.threads} threads, context {args.context}; "
          f"ms per forward, {args.calls} forwards per length")
    print(f"{'phase':<28}" + "".join(f"{'T=' + str(T):>10}" for T in lengths))
    for i, name in enumerate(PHASES):
        print(f"{name:<28}" + "".join(f"{table[T][i]:>10.3f}" for T in lengths))
    c_total = {T: sum(table[T][:len(PHASES)]) for T in lengths}
    print(f"{'C total':<28}" + "".join(f"{c_total[T]:>10.3f}" for T in lengths))
    print(f"{'Python and the rest':<28}"
          + "".join(f"{table[T][-1] - c_total[T]:>10.3f}" for T in lengths))
    print(f"{'wall':<28}" + "".join(f"{table[T][-1]:>10.3f}" for T in lengths))


if __name__ == "__main__":
    main()
