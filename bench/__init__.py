"""Benchmarks that report ratios of two things measured in the same run (see bench/README.md).

    python -m bench.reward_width [--quick] [--out DIR]
    python -m bench.weight_sync  [--quick] [--out DIR]
    python -m bench.step_phases  [--quick] [--out DIR]
    python -m bench.sandbox_corpus [--quick] [--out DIR]
"""
