"""caviar with its trials' MLflow writes dropped: the ablation that prices the logging.

``python -m bench.untracked spec.yaml`` is ``caviar run spec.yaml`` in-process, except that
the tracker's writer thread drops every child-run write (the run, its params, its per-epoch
metrics, its end) instead of sending it to the store. Everything else is caviar's: Ray, the
searcher, ASHA, the journal, checkpoints, the queue the observer feeds, the parent run and the
best model's test. So the sweep's wall time against ``caviar``'s, read from the journal for
both (there are no child runs to read here), is what MLflow logging costs the sweep.
"""

from __future__ import annotations

import sys
from typing import Any


def drop_trial_writes() -> None:
    """Make the writer accept trial writes without delivering them (the ops still queue)."""
    from orchestrator.store.mlflow_sink import MlflowSink

    def dropped(self: MlflowSink, trial: str, ops: list[Any]) -> None:
        return None

    if not callable(getattr(MlflowSink, "write_trial", None)):  # never patch a name that is gone
        raise RuntimeError("MlflowSink.write_trial is gone: update bench/untracked.py")
    MlflowSink.write_trial = dropped  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    drop_trial_writes()
    from orchestrator.cli import main as caviar_main

    return caviar_main(["run", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
