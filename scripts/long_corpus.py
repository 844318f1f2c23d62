"""Long documents for a long-context stage, from what every machine has: the Python standard
library's own sources (one JSONL record {"text": ...} per file).

    python scripts/long_corpus.py runs/data/long_code.jsonl --min-bytes 48000

Only files inside the library's sub-packages (asyncio/, email/, ...) are taken: the top-level
modules are the filler of `bench/long_context.py probe`, so the stage never trains on the
probe's prompts. `--min-bytes` keeps documents long enough (about 3 bytes per token for
code) that a packed training row is mostly one document, which is what teaches long-range
positions; shorter files would give many short documents per row instead.
"""

from __future__ import annotations

import argparse
import json
import sysconfig
from pathlib import Path


def long_sources(min_bytes: int) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [f for f in sorted(root.rglob("*.py"))
            if f.parent != root and "site-packages" not in f.parts
            and f.stat().st_size >= min_bytes]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="JSONL file to write")
    p.add_argument("--min-bytes", type=int, default=48000)
    args = p.parse_args(argv)
    files = long_sources(args.min_bytes)
    if not files:
        raise SystemExit(f"no standard-library file of {args.min_bytes} bytes or more")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for path in files:
            f.write(json.dumps({"text": path.read_text(errors="replace")}) + "\n")
    print(f"{out}: {len(files)} documents, "
          f"{sum(p.stat().st_size for p in files) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
