"""Two caviar source trees, one benchmark, alternated: is a change faster or slower?

On a shared machine the speed drifts by tens of percent between minutes, so two separate
``sweep_bench`` runs cannot tell a 10% change from noise. This runs ``caviar run`` on the
benchmark spec from tree A and tree B in ABBA order (drift cancels in each pair's ratio) and
reports per-tree medians and the median of the per-pair B/A ratios.

    .venv/bin/python -m bench.ab_bench --a /path/to/old/checkout --b . --pairs 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import caviar_command, clean_env, run_timed, wait_for_quiet
from bench.readers import read_caviar_journal, sweep_wall_s

SPEC = Path(__file__).parent / "specs" / "digits64.yaml"


def run_once(tree: Path, spec: Path, timeout_s: float) -> dict[str, float]:
    """One ``caviar run`` with ``tree``'s code first on the path (driver and workers)."""
    with tempfile.TemporaryDirectory(prefix="cv-ab-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        shutil.copy(spec, workdir / "spec.yaml")
        timed = run_timed(
            [*caviar_command(), "run", "spec.yaml"],
            cwd=workdir,
            env=clean_env(PYTHONPATH=str(tree.resolve())),
            log_name="caviar.log",
            timeout_s=timeout_s,
        )
        journal = read_caviar_journal(workdir / "caviar_runs")
        first = min(t.start_s for t in journal.trials)
        return {
            "end_to_end_s": timed.seconds,
            "sweep_wall_s": sweep_wall_s(journal.trials),
            "before_first_trial_s": first - timed.started_at,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="baseline source tree")
    parser.add_argument("--b", type=Path, required=True, help="changed source tree")
    parser.add_argument("--pairs", type=int, default=4, help="ABBA pairs (default 4)")
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, help="write the raw runs as JSON")
    parser.add_argument(
        "--wait-quiet",
        action="store_true",
        help="before each run, wait (up to 10 min) until the machine is quiet",
    )
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    for pair in range(args.pairs):
        order = ("a", "b") if pair % 2 == 0 else ("b", "a")
        for label in order:
            tree = args.a if label == "a" else args.b
            waited = wait_for_quiet() if args.wait_quiet else 0.0
            timed = run_once(tree, args.spec, args.timeout)
            run = {"tree": label, "pair": pair, "waited_s": waited, **timed}
            runs.append(run)
            print(
                f"[pair {pair + 1}/{args.pairs}] {label}: end to end {run['end_to_end_s']:.2f} s, "
                f"sweep {run['sweep_wall_s']:.2f} s, before first trial "
                f"{run['before_first_trial_s']:.2f} s"
                + (f" (waited {waited:.0f} s for quiet)" if waited >= 1 else ""),
                flush=True,
            )
    print(f"\nA = {args.a}, B = {args.b}; {args.pairs} ABBA pairs, medians")
    print("| measure | A | B | B/A (median of pairs) |\n| --- | --- | --- | --- |")
    for key in ("end_to_end_s", "sweep_wall_s", "before_first_trial_s"):
        a = [r[key] for r in runs if r["tree"] == "a"]
        b = [r[key] for r in runs if r["tree"] == "b"]
        ratios = [
            next(r[key] for r in runs if r["tree"] == "b" and r["pair"] == p)
            / next(r[key] for r in runs if r["tree"] == "a" and r["pair"] == p)
            for p in range(args.pairs)
        ]
        print(
            f"| {key} | {statistics.median(a):.2f} | {statistics.median(b):.2f} | "
            f"{statistics.median(ratios):.3f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
