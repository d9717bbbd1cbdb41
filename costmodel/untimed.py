"""The untimed choice: how often does trusting the model make a program slower?

`superopt.optimize` with `budget=0` times nothing: the model's best variant replaces the
program only if the model predicts it at least a margin faster than the original
(`superopt._search.MIN_PREDICTED_GAIN`). This replays that choice on every program of a
dataset that has a reference variant (`ref`: the program as its family writes it), for
several margins, scored as `optimize` scores candidates: without XLA's costs, since it
does not compile them. Per split of the families and margin: the share of programs the
pick replaces, the geometric-mean speedup of the pick over the reference, and the share
of programs the pick makes more than 5% slower.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .features import NO_XLA_COST
from .model import AbstractCostModel

MARGINS = (0.0, 0.05, 0.10, 0.15, 0.20, 0.30)
REFERENCE = "ref"
SLOWER = 1.05


@dataclass(frozen=True)
class UntimedRow:
    """The untimed choice on one split at one margin.

    **Arguments:**

    - `split`: `"training"`, `"validation"` or `"held out"`.
    - `margin`: the predicted gain a rewrite needs.
    - `programs`: programs with a reference variant and at least one other.
    - `rewritten`: the share whose pick is not the reference.
    - `speedup`: the geometric mean of reference / pick (measured).
    - `slower`: the share whose pick is more than 5% slower than the reference.
    - `ceiling`: the geometric mean of reference / the fastest variant.
    """

    split: str
    margin: float
    programs: int
    rewritten: float
    speedup: float
    slower: float
    ceiling: float


def untimed_picks(
    dataset: Dataset, idx: np.ndarray, predicted_s: np.ndarray, margins: Sequence[float]
) -> list[tuple[float, int, float, float, float, float]]:
    """`(margin, programs, rewritten, speedup, slower, ceiling)` per margin over the
    programs of records `idx`, whose predicted seconds are `predicted_s` (aligned)."""
    idx = np.asarray(idx)
    by_program: dict[str, list[int]] = {}
    for k, i in enumerate(idx):
        by_program.setdefault(str(dataset.program_id[i]), []).append(k)
    t = dataset.runtime_s[idx]
    rows = []  # (predicted gain of the model's best, its speedup, the best speedup)
    for ks in by_program.values():
        ref = [k for k in ks if str(dataset.variant_id[idx[k]]) == REFERENCE]
        if not ref or len(ks) < 2:
            continue
        r = ref[0]
        best = min(ks, key=lambda k: predicted_s[k])
        rows.append((predicted_s[best] / predicted_s[r], t[r] / t[best], t[r] / t[ks].min()))
    if not rows:
        return [(m, 0, np.nan, np.nan, np.nan, np.nan) for m in margins]
    ratio, gain, ceiling = (np.asarray(c, np.float64) for c in zip(*rows))
    out = []
    for m in margins:
        take = ratio < 1.0 - m
        speedup = np.where(take, gain, 1.0)
        out.append(
            (
                float(m),
                len(rows),
                float(take.mean()),
                float(np.exp(np.log(speedup).mean())),
                float(np.mean(speedup < 1.0 / SLOWER)),
                float(np.exp(np.log(ceiling).mean())),
            )
        )
    return out


def evaluate_untimed(
    dataset: Dataset,
    model: AbstractCostModel,
    splits: dict[str, np.ndarray],
    margins: Sequence[float] = MARGINS,
) -> list[UntimedRow]:
    """The untimed choice of `model` on each split (name -> record indices)."""
    rows = []
    for split, idx in splits.items():
        graphs = [dataclasses.replace(g, xla_cost=NO_XLA_COST) for g in dataset.graphs(idx)]
        predicted = np.asarray(model.score_programs(graphs), np.float64) if graphs else []
        for cells in untimed_picks(dataset, idx, np.asarray(predicted), margins):
            rows.append(UntimedRow(split, *cells))
    return rows


def table(rows: Sequence[UntimedRow], chosen: float | None = None) -> str:
    """The rows as a markdown table (the `chosen` margin marked)."""
    lines = [
        "| families | margin | programs | rewritten | speedup (geomean) | >5% slower | best possible |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " (used)" if chosen is not None and abs(r.margin - chosen) < 1e-12 else ""
        lines.append(
            f"| {r.split} | {r.margin:.0%}{mark} | {r.programs} | {r.rewritten:.1%} | "
            f"{r.speedup:.3f}x | {r.slower:.1%} | {r.ceiling:.3f}x |"
        )
    return "\n".join(lines)


def run_untimed(
    dataset_path: str | Path,
    weights: str | Path | None = None,
    *,
    chosen: float | None = None,
    print_table: bool = True,
) -> list[UntimedRow]:
    """The experiment with a checkpoint's learned model on the training, validation and
    held-out families its metadata records (`superopt evaluate --untimed`).

    **Arguments:**

    - `dataset_path`: the `.npz` dataset.
    - `weights`: the checkpoint directory (default `costmodel/weights/<backend>`).
    - `chosen`: the margin `optimize` uses, marked in the table.
    - `print_table`: print the markdown table.

    **Returns:** the `UntimedRow`s.
    """
    from .checkpoint import WEIGHTS_DIR, read_metadata
    from .dataset import split_by_family
    from .evaluate import held_out_setup

    dataset, models, _, test_families = held_out_setup(dataset_path, weights)
    weights = WEIGHTS_DIR / dataset.meta.get("backend", "cpu") if weights is None else weights
    val_families = read_metadata(weights).get("config", {}).get("val_families") or ()
    train, val, test = split_by_family(dataset, test_families, val_families=val_families)
    splits = {"training": train, "validation": val, "held out": test}
    rows = evaluate_untimed(dataset, models["learned"], splits)
    if print_table:
        print(table(rows, chosen))
    return rows
