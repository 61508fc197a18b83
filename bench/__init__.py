"""Benchmarks against peer implementations; each prints one JSON object per result line.

Run one with `python -m bench.<name>` (see its docstring for flags and expected runtime).
"""
