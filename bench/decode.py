"""Decode benchmark (the script behind `nextblock bench`; same flags).

    python bench/decode.py --json bench.json --plot frontier.png   # --dtype float32: reference

See nextblock/bench.py for what is measured and how.
"""

import sys

from nextblock.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
