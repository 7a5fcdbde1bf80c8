"""How much of a packed sweep's tail could regrouping survivors fuse? (issue 27, item 1)

Regrouping merges members that still run, from different packs, into one fused pack; members
of one pack must share the network's shape (``trainables.pack.shape_key``). Before building
it, this reads finished sweeps' journals and counts the epochs it could have fused at most:

- **alone**: member-epochs trained as the only member of their model (a lone trial, or a
  pack's last member), as the summary's "trial epochs" line counts them;
- **regroupable**: those alone epochs during which another trial of the *same shape*, not of
  the same pack, was also training alone: a regrouped pack could have trained both at once;
- **regroupable if padded**: the same with ``hidden_units`` left out of the shape, an upper
  bound for fusing members of different widths by padding them to the widest.

An epoch's time is [its end - its seconds, its end] as the trial journaled them.

```
.venv/bin/python -m bench.regroup_potential --spec examples/digits.yaml --seeds 0,1,2,3,4
.venv/bin/python -m bench.regroup_potential caviar_runs/digits-bn/*/   # sweeps already run
```
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.store.journal import read_journal
from orchestrator.trials import Trial, member_epochs
from trainables.pack.shape import shape_key

JOURNAL = "journal.jsonl"


@dataclass(frozen=True)
class AloneEpoch:
    trial: int
    unit: int  # the pack's first member, or the lone trial's own index
    shape: Hashable
    padded: Hashable  # the shape without hidden_units
    start: float
    end: float


@dataclass(frozen=True)
class Potential:
    sweep: str
    trials: int
    shapes: int
    fused: int
    alone: int
    regroupable: int
    padded: int


def alone_epochs(records: Sequence[Trial], fixed: dict) -> list[AloneEpoch]:
    """Every member-epoch trained alone, with its trial's shape and its time."""
    packs: dict[int, list[Trial]] = {}
    for record in records:
        packs.setdefault(record.pack if record.pack is not None else record.index, []).append(
            record
        )
    found: list[AloneEpoch] = []
    for unit, members in packs.items():
        for record in members:
            config = {**fixed, **record.config}
            shape = shape_key(config)
            padded = tuple((k, v) for k, v in shape if k != "hidden_units")
            for entry in record.history:
                epoch = int(entry.get("epoch", 0))
                training = sum(1 for m in members if m.epochs >= epoch)
                ended = entry.get("ended_at")
                seconds = entry.get("epoch_seconds")
                if training != 1 or ended is None or seconds is None:
                    continue
                found.append(
                    AloneEpoch(
                        record.index, unit, shape, padded, float(ended) - float(seconds), ended
                    )
                )
    return found


def _overlapping(epochs: list[AloneEpoch], key: str) -> int:
    """Alone epochs during which another unit's alone epoch of the same ``key`` ran."""
    count = 0
    for mine in epochs:
        if any(
            other.unit != mine.unit
            and getattr(other, key) == getattr(mine, key)
            and other.start < mine.end
            and mine.start < other.end
            for other in epochs
        ):
            count += 1
    return count


def potential(sweep_dir: Path, fixed: dict) -> Potential:
    records = list(read_journal(sweep_dir / JOURNAL).trials.values())
    fused, alone = member_epochs(records)
    epochs = alone_epochs(records, fixed)
    shapes = {shape_key({**fixed, **r.config}) for r in records}
    return Potential(
        sweep=sweep_dir.name,
        trials=len(records),
        shapes=len(shapes),
        fused=fused,
        alone=alone,
        regroupable=_overlapping(epochs, "shape"),
        padded=_overlapping(epochs, "padded"),
    )


def run_seeds(spec_path: Path, seeds: Iterable[int], workdir: Path) -> list[tuple[Path, dict]]:
    """Run the spec once per search seed (``caviar run --no-service``); the sweep folders."""
    spec = yaml.safe_load(spec_path.read_text())
    done = []
    for seed in seeds:
        folder = workdir / f"seed-{seed}"
        folder.mkdir(parents=True)
        spec["search"] = {**spec.get("search", {}), "seed": seed}
        (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
        command = [sys.executable, "-m", "orchestrator.cli", "run", "spec.yaml", "--no-service"]
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"seed {seed} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        journals = sorted(folder.glob(f"caviar_runs/*/*/{JOURNAL}"))
        done.append((journals[-1].parent, dict(spec.get("fixed") or {})))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="*", type=Path, help="sweep folders (holding a journal)")
    parser.add_argument("--spec", type=Path, help="run this spec once per seed first")
    parser.add_argument("--seeds", default="0", help="comma-separated search seeds (--spec)")
    parser.add_argument("--fixed-from", type=Path, help="the spec the sweeps ran (its fixed)")
    args = parser.parse_args(argv)
    targets: list[tuple[Path, dict]] = []
    if args.spec is not None:
        workdir = Path(tempfile.mkdtemp(prefix="caviar-regroup-"))
        seeds = [int(s) for s in args.seeds.split(",")]
        targets += run_seeds(args.spec, seeds, workdir)
    fixed_from = args.fixed_from or args.spec
    fixed = dict(yaml.safe_load(fixed_from.read_text()).get("fixed") or {}) if fixed_from else {}
    targets += [(path, fixed) for path in args.sweeps]
    if not targets:
        parser.error("give sweep folders, or --spec to run")
    print("| sweep | trials | shapes | member-epochs fused | alone | regroupable | if padded |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for path, spec_fixed in targets:
        p = potential(path, spec_fixed)
        share = f"{p.regroupable} ({p.regroupable / max(1, p.alone):.0%})"
        padded = f"{p.padded} ({p.padded / max(1, p.alone):.0%})"
        print(
            f"| {p.sweep} | {p.trials} | {p.shapes} | {p.fused} | {p.alone} | {share} | {padded} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
