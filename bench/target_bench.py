"""Time to a target: how soon each way of searching first reaches a validation accuracy.

The claim under test: early stopping (ASHA) with coarse-to-fine zoom rounds finds a good model
sooner than random search that trains every trial to the end, on the same trial budget. Each
arm is ``caviar run`` on bench/specs/digits64.yaml's space (64 trials, 30 epochs), varied only
as the arm says, run as a user runs it, in a fresh folder; the arms are interleaved per
repetition. From the sweep's journal: the wall time from the command's start (and from the
first trial's start) to the first epoch result at or above the target, and the epochs trained
(by all trials) until then.

    .venv/bin/python -m bench.target_bench                       # 3 repetitions, target 0.975
    .venv/bin/python -m bench.target_bench --reps 1 --arms zoom_asha,random_full

Arms: ``random_full`` (random search, no early stopping, unpacked: the baseline),
``zoom_asha`` (3 zoom rounds with ASHA, unpacked), and the same two packed
(``*_packed``: ``resources.pack_size: auto``). docs/performance.md reports the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    RESULTS_DIR,
    SPECS_DIR,
    BenchError,
    caviar_command,
    clean_env,
    fresh_workdir,
    load_yaml,
    machine_info,
    median,
    ratio,
    run_timed,
    write_json,
    write_yaml,
)

SPEC_FILE = "spec.yaml"


def _random_full(spec: dict[str, Any]) -> None:
    spec["scheduler"] = {"kind": "fifo", "max_epochs": spec["scheduler"]["max_epochs"]}


def _zoom_asha(spec: dict[str, Any]) -> None:
    trials = int(spec["search"]["num_trials"])
    spec["search"] = {
        "strategy": "zoom",
        "rounds": 3,
        "trials_per_round": max(1, trials // 3),
        "seed": spec["search"].get("seed", 0),
    }


def _packed(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def both(spec: dict[str, Any]) -> None:
        change(spec)
        spec["resources"] = {**(spec.get("resources") or {}), "pack_size": "auto"}

    return both


def _unpacked(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def both(spec: dict[str, Any]) -> None:
        change(spec)
        spec["resources"] = {**(spec.get("resources") or {}), "pack_size": 1}

    return both


ARMS: dict[str, Callable[[dict[str, Any]], None]] = {
    "random_full": _unpacked(_random_full),
    "zoom_asha": _unpacked(_zoom_asha),
    "random_full_packed": _packed(_random_full),
    "zoom_asha_packed": _packed(_zoom_asha),
}


def time_to_target(journal: Path, started_at: float, target: float) -> dict[str, Any]:
    """From a journal: seconds (from ``started_at``) and epochs until the first result at or
    above ``target``, the best accuracy reached, and the whole run's epochs."""
    epochs = 0
    reached: dict[str, Any] = {"seconds": None, "epochs": None, "seconds_in_sweep": None}
    best = None
    first_trial = None
    for line in journal.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("e") == "trial" and first_trial is None:
            first_trial = float(event["t"])
        if event.get("e") != "result":
            continue
        epochs += 1
        accuracy = event["r"].get("val_accuracy")
        if accuracy is None:
            continue
        best = accuracy if best is None else max(best, accuracy)
        if reached["seconds"] is None and accuracy >= target:
            ended = float(event["r"].get("ended_at", event["t"]))
            reached = {
                "seconds": ended - started_at,
                "epochs": epochs,
                "seconds_in_sweep": ended - (first_trial or started_at),
            }
    return {**reached, "best_val_accuracy": best, "epochs_total": epochs}


def run_arm(arm: str, base_spec: dict[str, Any], workdir: Path, target: float) -> dict[str, Any]:
    spec = copy.deepcopy(base_spec)
    ARMS[arm](spec)
    write_yaml(spec, workdir / SPEC_FILE)
    timed = run_timed(
        [*caviar_command(), "run", SPEC_FILE],
        cwd=workdir,
        env=clean_env(),
        log_name="caviar.log",
        timeout_s=1800,
    )
    journals = sorted((workdir / "caviar_runs").glob("*/*/journal.jsonl"))
    if len(journals) != 1:
        raise BenchError(f"expected one journal in {workdir}, found {len(journals)}")
    found = time_to_target(journals[0], timed.started_at, target)
    return {"arm": arm, "end_to_end_s": timed.seconds, **found}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=SPECS_DIR / "digits64.yaml")
    parser.add_argument("--target", type=float, default=0.975)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "target_bench.json")
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; valid: {', '.join(ARMS)}")
    base_spec = load_yaml(args.spec)
    base = fresh_workdir(None, "caviar-target-bench-")
    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for arm in arms:
            workdir = base / f"rep{rep}-{arm}"
            workdir.mkdir()
            run = {"rep": rep, **run_arm(arm, base_spec, workdir, args.target)}
            runs.append(run)
            print(json.dumps(run), flush=True)
    summary: dict[str, Any] = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {
            "seconds_to_target": median(r["seconds"] for r in mine),
            "seconds_from_first_trial": median(r["seconds_in_sweep"] for r in mine),
            "epochs_to_target": median(r["epochs"] for r in mine),
            "reached": sum(1 for r in mine if r["seconds"] is not None),
            "runs": len(mine),
            "best_val_accuracy": median(r["best_val_accuracy"] for r in mine),
            "end_to_end_s": median(r["end_to_end_s"] for r in mine),
            "epochs_total": median(r["epochs_total"] for r in mine),
        }
    baseline = summary.get("random_full", {})
    for figures in summary.values():
        figures["speedup_vs_random_full"] = ratio(
            baseline.get("seconds_to_target"), figures["seconds_to_target"]
        )
    result = {"target": args.target, "machine": machine_info(), "summary": summary, "runs": runs}
    write_json(result, args.out)
    for arm, figures in summary.items():
        print(f"{arm}: {json.dumps(figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
