"""Compile the int8 engine (int8_engine.c) once per machine kind and load it with ctypes.

    lib = engine_library()        # a ctypes.CDLL, or raises EngineUnavailable

The shared object is cached under $NEXTBLOCK_CACHE/engine/, keyed by the source, the flags
and the compiler, and written atomically (compiled to a temporary name, then renamed), so
concurrent first uses (pytest workers, a server and a CLI) never load a half-written file.

Why gcc + ctypes and not torch.utils.cpp_extension: the engine needs no torch headers, so a
plain C build takes a second or two instead of a minute, and a call costs microseconds.
The library links libgomp by its soname, so in a process that has imported torch it shares
torch's OpenMP runtime (one thread pool, no two pools spinning against each other).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

SOURCE = Path(__file__).with_name("int8_engine.c")
# the instruction sets with kernels of their own (int8_engine.c picks the header), best first
ISA_FLAGS = {
    "avx512_vnni": (["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx2", "-mfma"],
                    {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}),
    "avx2": (["-mavx2", "-mfma"], {"avx2", "fma"}),
}


class EngineUnavailable(RuntimeError):
    """No C compiler, or the build failed: the float32 path is used instead."""


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def runnable_isas() -> list[str]:
    """The kernel sets this CPU can run, best first; "portable" (plain C) always last."""
    have = cpu_flags()
    return [isa for isa, (_, need) in ISA_FLAGS.items() if need <= have] + ["portable"]


def best_isa() -> str:
    """The kernel set the engine is built with by default."""
    return runnable_isas()[0]


def compile_flags(isa: str | None = None) -> list[str]:
    """-O3 and OpenMP, plus the vector extensions of `isa` (default: the best this CPU has,
    or "portable" with NEXTBLOCK_ENGINE_PORTABLE=1; never -march=native: it would also
    switch on AMX, which some hosts advertise but do not let a process use)."""
    flags = ["-O3", "-fPIC", "-shared", "-fopenmp", "-std=c11"]
    if isa is None and os.environ.get("NEXTBLOCK_ENGINE_PORTABLE") == "1":
        isa = "portable"
    isa = isa or best_isa()
    return flags + (ISA_FLAGS[isa][0] if isa != "portable" else [])


def sources(directory: Path = SOURCE.parent) -> list[Path]:
    """The engine's C source and the kernel headers it includes (all part of the build key)."""
    return [directory / SOURCE.name, *sorted(directory.glob("kernels_*.h"))]


def compiler() -> str:
    """The C compiler the engine is built with: $CC, else gcc, else cc."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise EngineUnavailable("no C compiler (gcc) found")
    return cc


@lru_cache(maxsize=4)
def engine_library(isa: str | None = None) -> ctypes.CDLL:
    from ..config import cache_dir

    import torch  # noqa: F401 - torch's libgomp must be loaded first (shared runtime)

    cc, flags = compiler(), compile_flags(isa)
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources()) + " ".join(flags).encode()
                         + version.encode())
    target = cache_dir() / "engine" / f"int8_engine-{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
        os.close(fd)
        try:
            done = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise EngineUnavailable(f"building the int8 engine failed: "
                                        f"{done.stderr.strip().splitlines()[-1:]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ctypes.CDLL(str(target))

