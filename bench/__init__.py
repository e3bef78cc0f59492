"""Benchmarks (STYLE.md rule 10): ratios against a named baseline measured in the same run; not tests."""
