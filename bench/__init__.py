"""Benchmarks: `python -m bench`. Results land in bench/results/."""
