"""Solver scaling benchmark: n from 2^10 to 2^20.

    python benchmarks/sinkhorn.py --out bench-results
    python benchmarks/sinkhorn.py --sizes 1024 16384 --repeats 5

Same code as ``glass-pyg bench-sinkhorn``; this entry point defaults to the
full size sweep.
"""
import sys

from glass_pyg.cli import main

if __name__ == "__main__":
    from glass_pyg.experiments.memory import retain_freed_memory
    retain_freed_memory()  # as the glass-pyg command does: freed band-sized buffers are reused
    argv = sys.argv[1:]
    if "--sizes" not in argv and "--n" not in argv:
        argv = ["--sizes", *[str(2**k) for k in (10, 12, 14, 16, 18, 20)], *argv]
    sys.exit(main(["bench-sinkhorn", *argv]))
