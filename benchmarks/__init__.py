"""graphprune's benchmark suite: one script a measurement, run from the repository root as a
module (``python -m benchmarks.latency``; ``make bench`` runs them all), helpers shared in
``benchmarks.common``, results written under ``benchmarks/results/``."""
