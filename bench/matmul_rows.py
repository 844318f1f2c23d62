"""How the cost of one linear layer grows with the number of rows (tokens) it processes.

    python bench/matmul_rows.py

Block decoding runs B tokens per forward where AR runs 1; it pays off only if a B-row
forward costs much less than B one-row forwards. Prints microseconds per call and the ratio
to one row, for the default model's MLP shape (576 -> 1536), fp32, this machine's threads.
"""

import time

import torch
import torch.nn.functional as F


def per_call(fn, repeats=300):
    for _ in range(20):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main():
    torch.manual_seed(0)
    w = torch.randn(1536, 576)
    base = None
    print(f"threads: {torch.get_num_threads()}")
    print(f"{'rows':>5}{'us/call':>10}{'x one row':>11}")
    for m in (1, 2, 3, 4, 8, 16, 32):
        x = torch.randn(m, 576)
        us = per_call(lambda: F.linear(x, w)) * 1e6
        base = base or us
        print(f"{m:>5}{us:>10.1f}{us / base:>11.2f}")


if __name__ == "__main__":
    main()
