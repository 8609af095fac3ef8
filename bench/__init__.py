"""Benchmarks: `python -m bench NAME [--quick]`, each printing one JSON document.

Every figure that compares two things is taken in the same process, one after the other, so
machine noise hits both sides alike. No test asserts a time; tests only run `--quick`.
"""
