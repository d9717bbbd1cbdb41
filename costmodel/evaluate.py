"""The paper's two tasks on held-out families, for several cost models side by side.

- **Tile-size selection**: within each group of tile variants (one fused op of one program
  at several tile sizes), Kendall's tau between predicted and measured runtimes, and the
  slowdown of the tile the model picks against the truly fastest one.
- **Fusion / rewrite selection**: over every variant of every program, the whole-program
  runtime MAPE, and Kendall's tau within the variants of each program.

Next to the models, two rows say how far the measurements themselves can be trusted. The
`SECOND_RUN` row scores a second measurement run of the same programs as if it were a model
predicting the first (where the dataset has one: `superopt collect --remeasure`): no model
can be shown to do better against these labels. The `CEILING` row scores a model that knew
every true runtime against labels off the truth by their within-run standard error alone;
it is reached only if runs agree, which they do less.

`scatter_png` draws predicted vs measured runtime (log-log) with a tiny PNG writer, so no
plotting library is needed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .model import AbstractCostModel

# Held out of training and validation, chosen before any training run: one family per fused
# op (flash attention over a cross-length key set, cross-entropy with a bias) and three
# rewrite families (normalization forms, sums through a matmul, shared operands / scalars).
DEFAULT_TEST_FAMILIES = (
    "cross_attention",
    "xent_bias",
    "normalization",
    "reduction",
    "shared_operand",
)


@dataclass(frozen=True)
class TaskMetrics:
    """One model's numbers on both tasks (NaN where the test set has no such group)."""

    tile_tau: float
    tile_slowdown: float
    tile_groups: int
    rewrite_mape: float
    rewrite_tau: float
    rewrite_groups: int


def _mean(values: list[float]) -> float:
    vals = [v for v in values if np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _tau(pred: np.ndarray, true: np.ndarray) -> float:
    if len(true) < 2 or np.ptp(true) == 0:
        return float("nan")
    if np.ptp(pred) == 0:
        return 0.0
    from scipy.stats import kendalltau  # scipy.stats takes a second to import

    return float(kendalltau(pred, true).statistic)


def task_metrics(dataset: Dataset, idx: np.ndarray, predicted_s: np.ndarray) -> TaskMetrics:
    """Both tasks' metrics of predictions `predicted_s` for records `idx` of `dataset`."""
    true = dataset.runtime_s[idx]
    pred = np.asarray(predicted_s, np.float64)
    tile_groups: dict[str, list[int]] = {}
    rewrite_groups: dict[str, list[int]] = {}
    for k, i in enumerate(idx):
        if dataset.tile_group[i]:
            tile_groups.setdefault(str(dataset.tile_group[i]), []).append(k)
        rewrite_groups.setdefault(str(dataset.program_id[i]), []).append(k)
    taus, slowdowns = [], []
    for members in tile_groups.values():
        m = np.asarray(members)
        if len(m) < 2:
            continue
        taus.append(_tau(pred[m], true[m]))
        slowdowns.append(true[m][np.argmin(pred[m])] / true[m].min() - 1.0)
    rtaus = [_tau(pred[np.asarray(m)], true[np.asarray(m)]) for m in rewrite_groups.values()]
    mape = float(np.mean(np.abs(pred - true) / true)) if len(true) else float("nan")
    return TaskMetrics(
        _mean(taus),
        _mean(slowdowns),
        len(taus),
        mape,
        _mean(rtaus),
        sum(1 for m in rewrite_groups.values() if len(m) > 1),
    )


def _mean_metrics(runs: Sequence[TaskMetrics]) -> TaskMetrics:
    return TaskMetrics(
        *(
            float(np.mean([getattr(r, f) for r in runs])) if "groups" not in f
            else getattr(runs[0], f)
            for f in TaskMetrics.__dataclass_fields__
        )
    )  # fmt: skip


# A median of n normal samples has a standard error of 1.2533 sigma / sqrt(n), and sigma is
# the interquartile range / 1.349: 0.93 x (IQR / median) / sqrt(n) relative to the median.
_MEDIAN_ERROR = 1.2533 / 1.349


def noise_ceiling(
    dataset: Dataset, idx: np.ndarray, draws: int = 32, seed: int = 0
) -> TaskMetrics | None:
    """Both tasks' metrics of a perfect model: one that predicts every true runtime,
    scored against these measurements.

    Each measured median is off the truth by its standard error, estimated from its spread
    and rounds as `0.93 x spread / sqrt(rounds)`. The perfect model's predictions are the
    measurements moved by a draw of that error (one draw per executable: variants that
    compiled alike share a timing), averaged over `draws` draws.

    **Returns:** the metrics, or `None` if some record of `idx` has no rounds recorded (a
    dataset exported before they were).
    """
    idx = np.asarray(idx, np.int64)
    rounds = dataset.rounds[idx]
    if len(idx) == 0 or np.any(rounds <= 0):
        return None
    error = _MEDIAN_ERROR * dataset.spread[idx].astype(np.float64) / np.sqrt(rounds)
    code = dataset.executable_codes(idx)
    rng = np.random.default_rng(seed)
    true = dataset.runtime_s[idx]
    runs = [
        task_metrics(dataset, idx, true * np.exp(error * rng.standard_normal(code.max() + 1)[code]))
        for _ in range(draws)
    ]
    return _mean_metrics(runs)


CEILING = "within-run ceiling"
SECOND_RUN = "second run"

_HEADER = ("tile τ", "tile slowdown", "tile groups", "rewrite MAPE", "rewrite τ", "rewrite groups")
_RICH_HEADER = ("family", "model", "tile τ", "slowdown", "tiles", "MAPE", "rewrite τ", "groups")


def _cells(m: TaskMetrics) -> list[str]:
    def fmt(value: float, spec: str) -> str:
        return format(value, spec) if np.isfinite(value) else "-"

    return [
        fmt(m.tile_tau, ".3f"),
        fmt(100 * m.tile_slowdown, ".1f") + "%" * bool(np.isfinite(m.tile_slowdown)),
        str(m.tile_groups),
        fmt(100 * m.rewrite_mape, ".1f") + "%" * bool(np.isfinite(m.rewrite_mape)),
        fmt(m.rewrite_tau, ".3f"),
        str(m.rewrite_groups),
    ]


@dataclass(frozen=True)
class Evaluation:
    """Metrics per model (and the `SECOND_RUN` and `CEILING` rows where the dataset has
    what they need), the same per held-out family, and the predictions behind them."""

    metrics: dict[str, TaskMetrics]
    predictions: dict[str, np.ndarray]
    measured_s: np.ndarray
    test_families: tuple[str, ...]
    by_family: dict[str, dict[str, TaskMetrics]] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, TaskMetrics]]:
        """`(family or "all", model, metrics)` for every row of the tables."""
        out = [("all", name, m) for name, m in self.metrics.items()]
        for family, per_model in self.by_family.items():
            out += [(family, name, m) for name, m in per_model.items()]
        return out

    def table(self) -> str:
        """A markdown table like the paper's (all held-out families together, then each)."""
        head = "| families | model | " + " | ".join(_HEADER).replace("τ", "tau") + " |\n"
        head += "|---" * (len(_HEADER) + 2) + "|\n"
        rows = [
            "| " + " | ".join([family, name, *_cells(m)]) + " |" for family, name, m in self.rows()
        ]
        return head + "\n".join(rows) + "\n"

    def rich_table(self):
        from rich import box
        from rich.table import Table

        families = ", ".join(self.test_families)
        table = Table(title=f"held-out families: {families}", box=box.SIMPLE_HEAD)
        # Numbers are never cut; on a narrow terminal the names wrap instead.
        for i, col in enumerate(_RICH_HEADER):
            table.add_column(col, overflow="fold", no_wrap=i >= 2)
        last = None
        for family, name, m in self.rows():
            if last is not None and family != last:
                table.add_section()
            table.add_row(family if family != last else "", name, *_cells(m))
            last = family
        return table


def evaluate(
    dataset: Dataset,
    models: Mapping[str, AbstractCostModel],
    test_idx: np.ndarray | Sequence[int],
    test_families: tuple[str, ...] = (),
    png: str | Path | None = None,
) -> Evaluation:
    """Score the test records with every model and compute both tasks' metrics.

    **Arguments:**

    - `dataset`: the measured variants.
    - `models`: name → cost model (e.g. `{"learned": ..., "analytical": ...}`).
    - `test_idx`: the held-out records (whole families: see `split_by_family`).
    - `test_families`: their names, for the table's title.
    - `png`: where to write the predicted-vs-measured scatter, or `None`.

    **Returns:** an `Evaluation` (`.table()` gives the markdown table): every model, the
    second run and the noise ceiling, over all the test records and per family when there
    are several.
    """
    idx = np.asarray(test_idx, np.int64)
    graphs = dataset.graphs(idx)
    predictions = {name: np.asarray(m.score_programs(graphs)) for name, m in models.items()}

    def scores(positions: np.ndarray) -> dict[str, TaskMetrics]:
        sub = idx[positions]
        out = {name: task_metrics(dataset, sub, p[positions]) for name, p in predictions.items()}
        if len(sub) and np.isfinite(dataset.repeat_s[sub]).all():
            out[SECOND_RUN] = task_metrics(dataset, sub, dataset.repeat_s[sub])
        ceiling = noise_ceiling(dataset, sub)
        if ceiling is not None:
            out[CEILING] = ceiling
        return out

    families = dataset.family[idx]
    by_family = {}
    if len(set(families.tolist())) > 1:
        by_family = {f: scores(np.flatnonzero(families == f)) for f in sorted(set(families))}
    result = Evaluation(
        scores(np.arange(len(idx))),
        predictions,
        dataset.runtime_s[idx],
        tuple(test_families),
        by_family,
    )
    if png is not None:
        scatter_png(png, result.measured_s, predictions)
    return result


# ------------------------------------------------------------------ a tiny PNG writer

_COLORS = [(220, 50, 47), (38, 139, 210), (133, 153, 0), (211, 54, 130)]


def _png_bytes(pixels: np.ndarray) -> bytes:
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(np.uint8).tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def scatter_png(
    path: str | Path, measured_s: np.ndarray, predictions: Mapping[str, np.ndarray], size: int = 480
) -> Path:
    """Write a log-log scatter of predicted vs measured seconds, one colour per model
    (in the order given: red, blue, green, magenta), with the diagonal in grey."""
    img = np.full((size, size, 3), 255, np.uint8)
    values = [np.asarray(measured_s)] + [np.asarray(p) for p in predictions.values()]
    logs = np.log10(np.maximum(np.concatenate(values), 1e-12))
    lo, hi = float(logs.min()) - 0.1, float(logs.max()) + 0.1
    margin = 20

    def to_px(v: np.ndarray) -> np.ndarray:
        frac = (np.log10(np.maximum(v, 1e-12)) - lo) / max(hi - lo, 1e-9)
        return (margin + frac * (size - 2 * margin)).astype(int)

    diag = np.arange(margin, size - margin)
    img[size - 1 - diag, diag] = (160, 160, 160)
    img[size - margin, margin : size - margin] = 0
    img[margin : size - margin, margin] = 0
    x = to_px(np.asarray(measured_s))
    for color, pred in zip(_COLORS, predictions.values()):
        y = size - 1 - to_px(np.asarray(pred))
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                img[np.clip(y + dy, 0, size - 1), np.clip(x + dx, 0, size - 1)] = color
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(img))
    return path


def held_out_setup(
    dataset_path: str | Path, weights: str | Path | None = None
) -> tuple[Dataset, dict[str, AbstractCostModel], np.ndarray, tuple[str, ...]]:
    """What an evaluation on held-out families needs: the dataset, the learned and
    analytical models of a checkpoint, and the held-out records and families (those the
    checkpoint's metadata records).

    **Arguments:**

    - `dataset_path`: the `.npz` dataset.
    - `weights`: the checkpoint directory (default `costmodel/weights/<backend>`).

    **Returns:** `(dataset, {"learned": ..., "analytical": ...}, test_idx, test_families)`.
    """
    from .analytical import AnalyticalCostModel, dataset_calibration
    from .checkpoint import WEIGHTS_DIR, load_analytical, load_checkpoint, read_metadata
    from .dataset import split_by_family

    dataset = Dataset.load(dataset_path)
    weights = WEIGHTS_DIR / dataset.meta.get("backend", "cpu") if weights is None else weights
    learned = load_checkpoint(weights)
    meta = read_metadata(weights)
    test_families = tuple(meta.get("test_families") or DEFAULT_TEST_FAMILIES)
    train_idx, val_idx, test_idx = split_by_family(dataset, test_families)
    analytical = load_analytical(weights)
    if analytical is None:
        fit_idx = np.concatenate([train_idx, val_idx])
        analytical = AnalyticalCostModel(dataset_calibration(dataset.meta)).fit(
            dataset.graphs(fit_idx), dataset.runtime_s[fit_idx]
        )
    return dataset, {"learned": learned, "analytical": analytical}, test_idx, test_families


def run_evaluation(
    dataset_path: str | Path,
    weights: str | Path | None = None,
    *,
    png: str | Path | None = None,
    print_table: bool = True,
) -> Evaluation:
    """Evaluate the learned and analytical models on the held-out families of a dataset
    (what `superopt evaluate` runs): the families recorded in the checkpoint's metadata.

    **Arguments:**

    - `dataset_path`: the `.npz` dataset.
    - `weights`: the checkpoint directory (default `costmodel/weights/<backend>`).
    - `png`: where to write the scatter plot, or `None`.
    - `print_table`: print the rich table.

    **Returns:** the `Evaluation`.
    """
    dataset, models, test_idx, test_families = held_out_setup(dataset_path, weights)
    result = evaluate(dataset, models, test_idx, test_families, png)
    if print_table:
        from rich.console import Console

        Console().print(result.rich_table())
    return result
