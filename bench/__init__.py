"""Benchmarks (``make bench``): numbers quoted in docs/benchmarks.md come from here."""
