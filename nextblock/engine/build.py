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
_VNNI_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx2", "-mfma"]


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


def compile_flags(portable: bool = False) -> list[str]:
    """-O3 and OpenMP; AVX-512 VNNI only where this CPU has it (never -march=native: it
    would also switch on AMX, which some hosts advertise but do not let a process use).
    portable=True (or NEXTBLOCK_ENGINE_PORTABLE=1): plain C, for any CPU."""
    flags = ["-O3", "-fPIC", "-shared", "-fopenmp", "-std=c11"]
    portable = portable or os.environ.get("NEXTBLOCK_ENGINE_PORTABLE") == "1"
    if not portable and {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= cpu_flags():
        flags += _VNNI_FLAGS
    return flags


def compiler() -> str:
    """The C compiler the engine is built with: $CC, else gcc, else cc."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise EngineUnavailable("no C compiler (gcc) found")
    return cc


@lru_cache(maxsize=2)
def engine_library(portable: bool = False) -> ctypes.CDLL:
    from ..config import cache_dir

    import torch  # noqa: F401 - torch's libgomp must be loaded first (shared runtime)

    cc, flags = compiler(), compile_flags(portable)
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode() + version.encode())
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

