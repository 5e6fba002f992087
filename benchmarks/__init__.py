"""diffmd benchmarks (run with ``diffmd bench NAME``; see README.md in this folder).

Not installed with the package: this folder is imported as ``benchmarks`` from
the repository root by ``diffmd bench`` (diffmd/cli/_bench.py).
"""
