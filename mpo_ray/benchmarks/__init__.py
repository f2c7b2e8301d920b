"""Benchmarks run by `mpo-ray bench ...`: they print figures and ratios, never assert timings."""
