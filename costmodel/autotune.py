"""The autotuner experiment: how many measurements does a cost model save?

The paper's use of a learned model: with hardware time scarce, let the model propose
which variants to measure. On the held-out groups of a dataset — tile-size groups (one
fused op of one program at several tile sizes) and rewrite groups (every variant of one
program) — each proposer orders a group's variants, the hardware "measures" them in that
order (the dataset's measured runtimes), and after k = 1, 2, 4, 8, 16 measurements we
record the best runtime found, relative to the best of all the group's variants. A
measurement is one distinct executable: a variant that compiles to one already measured is
known without measuring.

Proposers: each cost model (cheapest predicted first) and random search (averaged over
many random orders). Reported per group kind: the share of groups within 5% of the best
after k measurements, the mean slowdown of the best found, and the mean number of
measurements needed to get within 5%. `curves_png` draws the shares (and slowdowns)
against k with the dependency-free PNG writer of `costmodel.evaluate`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .evaluate import _COLORS, _png_bytes
from .model import AbstractCostModel

STEPS = (1, 2, 4, 8, 16)
RANDOM = "random"


@dataclass(frozen=True)
class AutotuneRow:
    """One proposer on one kind of group.

    **Arguments:**

    - `kind`: `"tile"` or `"rewrite"`.
    - `strategy`: the proposer (a model's name, or `"random"`).
    - `groups`: how many groups of that kind (with at least two variants) there are.
    - `within`: per step, the share of groups whose best found is within the tolerance
      of the group's best.
    - `slowdown`: per step, the mean of `best found / best - 1` over the groups.
    - `to_reach`: the mean number of measurements until the best found is within the
      tolerance (a group's size at most).
    """

    kind: str
    strategy: str
    groups: int
    within: tuple[float, ...]
    slowdown: tuple[float, ...]
    to_reach: float


@dataclass(frozen=True)
class AutotuneResult:
    """The experiment's curves: one `AutotuneRow` per group kind and proposer."""

    rows: tuple[AutotuneRow, ...]
    steps: tuple[int, ...]
    tolerance: float
    test_families: tuple[str, ...] = ()

    def row(self, kind: str, strategy: str) -> AutotuneRow:
        """The row of one group kind and proposer (`KeyError` if absent)."""
        for r in self.rows:
            if r.kind == kind and r.strategy == strategy:
                return r
        raise KeyError(f"no autotune row for kind {kind!r} and strategy {strategy!r}")

    def table(self) -> str:
        """A markdown table: per k, the share within the tolerance (mean slowdown)."""
        tol = f"{100 * self.tolerance:g}%"
        head = (
            "| groups | proposer | "
            + " | ".join(f"k={k}" for k in self.steps)
            + f" | measurements to {tol} |\n"
            + "|---" * (len(self.steps) + 3)
            + "|\n"
        )
        lines = []
        for r in self.rows:
            cells = [_cell(w, s) for w, s in zip(r.within, r.slowdown)]
            lines.append(
                f"| {r.kind} ({r.groups}) | {r.strategy} | "
                + " | ".join(cells)
                + f" | {r.to_reach:.2f} |"
            )
        note = (
            f"\nEach cell: share of held-out groups within {tol} of the best variant after "
            "k measurements (mean slowdown of the best found).\n"
        )
        return head + "\n".join(lines) + "\n" + note

    def rich_table(self):
        """The same numbers as a rich table."""
        from rich.table import Table

        title = "autotuning: best found after k measurements"
        if self.test_families:
            title += f" (held out: {', '.join(self.test_families)})"
        table = Table(title=title)
        table.add_column("groups")
        table.add_column("proposer")
        for k in self.steps:
            table.add_column(f"k={k}", justify="right")
        table.add_column(f"to {100 * self.tolerance:g}%", justify="right")
        for r in self.rows:
            cells = [_cell(w, s) for w, s in zip(r.within, r.slowdown)]
            table.add_row(f"{r.kind} ({r.groups})", r.strategy, *cells, f"{r.to_reach:.2f}")
        return table


def _cell(within: float, slowdown: float) -> str:
    if not np.isfinite(within):
        return "-"
    return f"{100 * within:.0f}% ({100 * slowdown:.1f}%)"


def _curve(
    runtime: np.ndarray,
    order: np.ndarray,
    steps: Sequence[int],
    tolerance: float,
    executable: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Ratio of the best found to the best, within-tolerance flags per step, and the
    number of measurements to get within tolerance, for one order of one group.

    A variant that compiles to an executable already measured costs no measurement (the
    tuner compiles before it measures), so only each executable's first variant counts."""
    _, first = np.unique(executable[order], return_index=True)
    order = order[np.sort(first)]
    times = runtime[order]
    found = np.minimum.accumulate(times) / times.min()
    at = np.asarray([found[min(k, len(found)) - 1] for k in steps])
    reached = int(np.argmax(found <= 1.0 + tolerance)) + 1
    return at, at <= 1.0 + tolerance, float(reached)


def groups_of(dataset: Dataset, idx: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Positions into `idx` of each tile-size group and each rewrite group (>= 2 variants).

    **Arguments:**

    - `dataset`: the dataset.
    - `idx`: the record indices under study (the held-out ones).

    **Returns:** `{"tile": [...], "rewrite": [...]}`, each a list of position arrays.
    """
    tile: dict[str, list[int]] = {}
    rewrite: dict[str, list[int]] = {}
    for k, i in enumerate(idx):
        if dataset.tile_group[i]:
            tile.setdefault(str(dataset.tile_group[i]), []).append(k)
        rewrite.setdefault(str(dataset.program_id[i]), []).append(k)
    return {
        kind: [np.asarray(m) for m in found.values() if len(m) > 1]
        for kind, found in (("tile", tile), ("rewrite", rewrite))
    }


def autotune_curves(
    dataset: Dataset,
    idx: np.ndarray | Sequence[int],
    predictions: Mapping[str, np.ndarray],
    *,
    steps: Sequence[int] = STEPS,
    tolerance: float = 0.05,
    random_orders: int = 64,
    seed: int = 0,
    test_families: tuple[str, ...] = (),
) -> AutotuneResult:
    """Best runtime found after k measurements, per proposer, on the groups of `idx`.

    **Arguments:**

    - `dataset`: the measured variants.
    - `idx`: the records to study (the held-out families).
    - `predictions`: proposer name to predicted seconds of each record of `idx`; a
      proposer measures a group's variants cheapest predicted first (ties in the
      dataset's order).
    - `steps`: the measurement counts to report.
    - `tolerance`: "within 5%" is `tolerance=0.05`.
    - `random_orders`: random orders averaged over for the random proposer.
    - `seed`: the random orders' seed.
    - `test_families`: the held-out family names, for the table's title.

    **Returns:** an `AutotuneResult` (`.table()` gives markdown).
    """
    idx = np.asarray(idx, np.int64)
    runtime = np.asarray(dataset.runtime_s[idx], np.float64)
    executable = dataset.executable_codes(idx)
    steps = tuple(int(k) for k in steps)
    rng = np.random.default_rng(seed)
    rows = []
    for kind, groups in groups_of(dataset, idx).items():
        orders: dict[str, list[list[np.ndarray]]] = {}
        for name, pred in predictions.items():
            pred = np.asarray(pred, np.float64)
            orders[name] = [[m[np.argsort(pred[m], kind="stable")]] for m in groups]
        orders[RANDOM] = [[rng.permutation(m) for _ in range(random_orders)] for m in groups]
        for name, per_group in orders.items():
            ratios, flags, reach = [], [], []
            for group_orders in per_group:
                curves = [_curve(runtime, o, steps, tolerance, executable) for o in group_orders]
                ratios.append(np.mean([c[0] for c in curves], axis=0))
                flags.append(np.mean([c[1] for c in curves], axis=0))
                reach.append(np.mean([c[2] for c in curves]))
            nan = tuple(float("nan") for _ in steps)
            rows.append(
                AutotuneRow(
                    kind,
                    name,
                    len(groups),
                    tuple(float(v) for v in np.mean(flags, axis=0)) if groups else nan,
                    tuple(float(v) - 1.0 for v in np.mean(ratios, axis=0)) if groups else nan,
                    float(np.mean(reach)) if groups else float("nan"),
                )
            )
    return AutotuneResult(tuple(rows), steps, tolerance, tuple(test_families))


def evaluate_autotune(
    dataset: Dataset,
    models: Mapping[str, AbstractCostModel],
    test_idx: np.ndarray | Sequence[int],
    test_families: tuple[str, ...] = (),
    png: str | Path | None = None,
    **options: object,
) -> AutotuneResult:
    """Score the held-out records with every model, then run `autotune_curves`.

    **Arguments:**

    - `dataset`: the measured variants.
    - `models`: name to cost model (random search is added by the experiment).
    - `test_idx`: the held-out records.
    - `test_families`: their family names, for the title.
    - `png`: where to write the plot (`curves_png`), or `None`.
    - `**options`: passed to `autotune_curves` (`steps`, `tolerance`, ...).

    **Returns:** the `AutotuneResult`.
    """
    idx = np.asarray(test_idx, np.int64)
    graphs = dataset.graphs(idx)
    predictions = {name: np.asarray(m.score_programs(graphs)) for name, m in models.items()}
    result = autotune_curves(dataset, idx, predictions, test_families=test_families, **options)
    if png is not None:
        curves_png(png, result)
    return result


# ------------------------------------------------------------------ the plot

_GRID = (225, 225, 225)
_AXIS = (0, 0, 0)


def _line(img: np.ndarray, p0: tuple[int, int], p1: tuple[int, int], color, width: int = 1):
    n = max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1])) + 1
    xs = np.rint(np.linspace(p0[0], p1[0], n)).astype(int)
    ys = np.rint(np.linspace(p0[1], p1[1], n)).astype(int)
    h, w, _ = img.shape
    for d in range(-(width // 2), width - width // 2):
        for dx, dy in ((d, 0), (0, d)):
            img[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)] = color


def curves_png(path: str | Path, result: AutotuneResult, panel: int = 260) -> Path:
    """Plot the experiment: one column per group kind; top row the share of groups within
    the tolerance (0 at the bottom, 1 at the top, grid lines every 25%), bottom row the
    mean slowdown of the best found (0 at the bottom, the largest slowdown at the top);
    x is k on a log2 axis (ticks at each step). Colours in the order of the proposers:
    red, blue, green, magenta (with one model and random: red, blue).

    **Arguments:**

    - `path`: the PNG file to write (folders are created).
    - `result`: an `AutotuneResult`.
    - `panel`: the side of one panel in pixels.

    **Returns:** the path.
    """
    kinds = list(dict.fromkeys(r.kind for r in result.rows))
    strategies = list(dict.fromkeys(r.strategy for r in result.rows))
    margin = 24
    width, height = len(kinds) * panel, 2 * panel
    img = np.full((height, width, 3), 255, np.uint8)
    logk = np.log2(np.asarray(result.steps, np.float64))
    span = max(float(logk.max() - logk.min()), 1e-9)
    worst = max((max(r.slowdown) for r in result.rows if np.isfinite(r.slowdown).all()),
                default=0.0)  # fmt: skip
    top = max(worst, 1e-6)
    for col, kind in enumerate(kinds):
        for row, (field, scale) in enumerate((("within", 1.0), ("slowdown", top))):
            x0, y0 = col * panel + margin, row * panel + margin
            inner = panel - 2 * margin

            def px(i: int, value: float) -> tuple[int, int]:
                x = x0 + (logk[i] - logk.min()) / span * inner
                y = y0 + inner - min(max(value / scale, 0.0), 1.0) * inner
                return int(np.rint(x)), int(np.rint(y))

            for q in (0.25, 0.5, 0.75, 1.0):
                y = int(np.rint(y0 + inner - q * inner))
                img[y, x0 : x0 + inner + 1] = _GRID
            for i in range(len(result.steps)):
                x = px(i, 0.0)[0]
                img[y0 + inner - 4 : y0 + inner + 5, x] = _AXIS
            img[y0 + inner, x0 : x0 + inner + 1] = _AXIS
            img[y0 : y0 + inner + 1, x0] = _AXIS
            for color, strategy in zip(_COLORS, strategies):
                try:
                    r = result.row(kind, strategy)
                except KeyError:
                    continue
                values = getattr(r, field)
                if not np.isfinite(values).all():
                    continue
                points = [px(i, v) for i, v in enumerate(values)]
                for a, b in itertools.pairwise(points):
                    _line(img, a, b, color, width=2)
                for x, y in points:
                    img[max(y - 3, 0) : y + 4, max(x - 3, 0) : x + 4] = color
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(img))
    return path


def run_autotune(
    dataset_path: str | Path,
    weights: str | Path | None = None,
    *,
    png: str | Path | None = None,
    print_table: bool = True,
) -> AutotuneResult:
    """The experiment on the held-out families of a dataset (`superopt evaluate --autotune`):
    the families recorded in the checkpoint's metadata, proposers the learned model, the
    analytical model and random search.

    **Arguments:**

    - `dataset_path`: the `.npz` dataset.
    - `weights`: the checkpoint directory (default `costmodel/weights/<backend>`).
    - `png`: where to write the plot, or `None`.
    - `print_table`: print the rich table, then the markdown one.

    **Returns:** the `AutotuneResult`.
    """
    from .evaluate import held_out_setup

    dataset, models, test_idx, test_families = held_out_setup(dataset_path, weights)
    result = evaluate_autotune(dataset, models, test_idx, test_families, png)
    if print_table:
        from rich.console import Console

        console = Console()
        console.print(result.rich_table())
        console.print(result.table(), markup=False, highlight=False)
    return result
