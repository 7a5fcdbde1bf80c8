"""Regenerate fruit.csv, the small table behind examples/csv.yaml (seeded: same file each run).

300 fruits, 100 each of apple, orange and pear, five measurements whose ranges overlap, so a
model has to combine them: python examples/data/make_fruit.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

#                  weight_g    diameter_cm  height_cm   sugar_brix  skin_roughness
MEANS = {
    "apple": (170.0, 7.5, 7.0, 13.0, 0.20),
    "orange": (180.0, 7.8, 7.4, 11.0, 0.60),
    "pear": (175.0, 6.6, 9.5, 12.0, 0.35),
}
SPREAD = (25.0, 0.6, 0.9, 1.5, 0.12)
COLUMNS = ("weight_g", "diameter_cm", "height_cm", "sugar_brix", "skin_roughness", "fruit")


def main() -> None:
    rng = np.random.default_rng(7)
    rows = [
        (*np.round(rng.normal(means, SPREAD), 2), fruit)
        for fruit, means in MEANS.items()
        for _ in range(100)
    ]
    order = rng.permutation(len(rows))
    with (Path(__file__).parent / "fruit.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(COLUMNS)
        writer.writerows(rows[i] for i in order)


if __name__ == "__main__":
    main()
