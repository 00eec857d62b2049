"""Benchmarks that print tables (`make bench`). Every `python -m bench.X` imports this package first, before torch."""

import os

# The service's OpenMP setting (percept/cli.py sets it for every `percept` command), so that the benchmarks
# measure the engines as the service runs them.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
