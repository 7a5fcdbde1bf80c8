"""caviar's benchmarks: the sweep against its peers, and pure orchestration overhead.

- ``python -m bench.sweep_bench``: caviar, the Ray Tune docs' pattern and Optuna on one fixed
  64-trial ASHA sweep, interleaved over repetitions, against the compute floor.
- ``python -m bench.overhead_bench``: no-op trials through caviar's own machinery, against the
  theoretical minimum.

See docs/performance.md for what every number means. Nothing here is imported by caviar
itself; the package lives beside ``orchestrator`` and ``trainables`` only to be run from a
checkout.
"""
