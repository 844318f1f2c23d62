"""A/B of two int8 engine sources in one process: forward cost by query length, interleaved.

    mkdir /tmp/old && git archive 862c19b nextblock/engine | tar -x -C /tmp/old
    python bench/engine_ab.py /tmp/old/nextblock/engine/int8_engine.c \
        nextblock/engine/int8_engine.c [--lengths 1,2,4,8] [--rounds 15] [--threads 2]
        [--context 128]
    python bench/engine_ab.py nextblock/engine/int8_engine.c@portable \
        nextblock/engine/int8_engine.c          # one source, two kernel sets (SRC@ISA)

A source is an int8_engine.c whose kernel headers sit beside it; SRC@ISA builds it with that
instruction set's flags (portable, avx2, avx512_vnni; default the best this CPU has).

On a machine whose speed drifts (steal time on a virtual machine), two runs of
bench/forward_cost.py minutes apart differ by 10-20%, more than most kernel changes. This
compiles both sources with the engine's own flags, loads the default model once, and times
the same forwards with either library swapped in, round by round, keeping each one's
fastest round (forward_cost.interleaved). Both sources must share the C structs of
nextblock/engine/int8.py.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import nextblock
from nextblock.engine.build import compile_flags, compiler

sys.path.insert(0, str(Path(__file__).parent))
import forward_cost  # noqa: E402


def build(source: str, out: Path) -> ctypes.CDLL:
    path, _, isa = source.partition("@")
    flags = compile_flags(isa=isa or None)
    subprocess.run([compiler(), *flags, path, "-o", str(out), "-lm"], check=True)
    lib = ctypes.CDLL(str(out))
    lib.nb_scratch_floats.restype = ctypes.c_long
    return lib


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs=2, help="two int8_engine.c files (SRC or SRC@ISA): A and B")
    p.add_argument("--lengths", default="1,2,4,8")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=128, help="cached tokens before the pass")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    lm = nextblock.load(None, dtype="int8")
    engine = lm.model.nextblock_engine
    tmp = Path(tempfile.mkdtemp())
    libs = {f"{tag} {src}": build(src, tmp / f"{tag}.so") for tag, src in zip("AB", args.sources)}
    fns = {}
    for T in lengths:
        fwd = forward_cost.forward_fn(lm, T, args.context)
        for name, lib in libs.items():
            def run(fwd=fwd, lib=lib):
                engine.lib = lib
                fwd()
            fns[name, T] = run
    best = forward_cost.interleaved(fns, args.rounds, 0.1)
    print(f"ms per forward (x T=1), {args.threads} threads, context {args.context}, best of "
          f"{args.rounds} interleaved rounds")
    for name in libs:
        print(name + ": " + "  ".join(f"T={T} {best[name, T] * 1000:.2f} "
                                      f"({best[name, T] / best[name, lengths[0]]:.2f})"
                                      for T in lengths))


if __name__ == "__main__":
    main()
