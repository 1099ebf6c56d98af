"""The benchmark harness behind ``benchmarks/*.py``: budgeted worker processes, instances, tables, figures.

Not part of the installed package; the scripts beside it import it as ``harness``.
"""
