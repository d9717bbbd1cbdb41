"""The evaluation tasks and the PNG writer."""

from __future__ import annotations

import importlib
import zlib

import numpy as np
import pytest

from costmodel.dataset import Dataset, Record
from costmodel.evaluate import CEILING, evaluate, noise_ceiling, scatter_png, task_metrics
from costmodel.features import NUM_CONFIG, NUM_FEATURES, GraphArrays
from costmodel.model import AbstractCostModel


def _dataset():
    g = GraphArrays(
        np.zeros(1, np.int32),
        np.zeros((1, NUM_FEATURES), np.float32),
        np.zeros((0, 2), np.int32),
        np.zeros(NUM_CONFIG, np.float32),
    )
    times = [1.0, 2.0, 3.0, 4.0]
    records = [Record("f", "p0", f"t{i}", g, t, 0.0, "p0/tile") for i, t in enumerate(times)]
    records += [Record("f", "p1", f"r{i}", g, t, 0.0) for i, t in enumerate([1.0, 5.0])]
    return Dataset.from_records(records)


def test_perfect_and_reversed_predictions():
    ds = _dataset()
    idx = np.arange(len(ds))
    perfect = task_metrics(ds, idx, ds.runtime_s)
    assert perfect.tile_tau == 1.0 and perfect.tile_slowdown == 0.0 and perfect.rewrite_mape == 0
    assert perfect.tile_groups == 1 and perfect.rewrite_groups == 2
    reversed_ = task_metrics(ds, idx, 1.0 / ds.runtime_s)
    assert reversed_.tile_tau == -1.0
    assert np.isclose(reversed_.tile_slowdown, 3.0)  # picks the 4 s tile over the 1 s one


class _Oracle(AbstractCostModel):
    def score_programs(self, graphs):
        return np.arange(1, len(graphs) + 1, dtype=float)

    def score_nodes(self, node_opcode, node_feat):
        return np.zeros(len(node_opcode))


def test_evaluate_tables_and_png(tmp_path):
    ds = _dataset()
    result = evaluate(ds, {"oracle": _Oracle()}, np.arange(4), ("f",), png=tmp_path / "s.png")
    assert result.metrics["oracle"].tile_tau == 1.0
    assert "| all | oracle | 1.000 | 0.0% |" in result.table()
    assert CEILING not in result.metrics  # the records carry no rounds
    assert not result.by_family  # one family: no per-family rows
    data = (tmp_path / "s.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


def test_png_pixels_round_trip(tmp_path):
    path = scatter_png(tmp_path / "p.png", np.asarray([1e-3, 1e-2]), {"m": np.asarray([1e-3, 1e-2])},
                       size=64)  # fmt: skip
    data = path.read_bytes()
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    raw = zlib.decompress(data[start : start + length])
    rows = np.frombuffer(raw, np.uint8).reshape(64, 1 + 64 * 3)
    assert (rows[:, 0] == 0).all()
    pixels = rows[:, 1:].reshape(64, 64, 3)
    assert ((pixels == (220, 50, 47)).all(-1)).sum() > 0  # the model's red points


def _noisy(spread: float, rounds: int, families=("f", "f")) -> Dataset:
    g = _dataset().graph(0)
    times = [1.0, 1.01, 1.02, 1.2, 2.0]
    records = []
    for fam, p in zip(families, ("p0", "p1")):
        records += [
            Record(fam, p, f"t{i}", g, t, spread, f"{p}/tile", f"x{i}", rounds)
            for i, t in enumerate(times)
        ]
    # A variant that compiled to the executable of `t0` shares its timing.
    records.append(Record(families[0], "p0", "twin", g, 1.0, spread, "", "x0", rounds))
    return Dataset.from_records(records)


def test_noise_ceiling_falls_with_noise_and_needs_rounds():
    exact = noise_ceiling(_noisy(0.0, 10), np.arange(11))
    assert exact.tile_tau == pytest.approx(1.0) and exact.rewrite_tau == pytest.approx(1.0)
    assert exact.tile_slowdown == 0.0 and exact.rewrite_mape == 0.0
    quiet = noise_ceiling(_noisy(0.02, 100), np.arange(11))
    loud = noise_ceiling(_noisy(0.5, 5), np.arange(11))
    assert 1.0 > quiet.tile_tau > loud.tile_tau
    assert quiet.rewrite_mape < loud.rewrite_mape
    # 1.0, 1.01 and 1.02 s swap under 20% noise; 2 s stays last.
    assert loud.tile_tau > 0.2 and loud.tile_slowdown < 0.2
    assert noise_ceiling(_noisy(0.02, 0), np.arange(11)) is None  # rounds unknown


def test_noise_ceiling_draws_once_per_executable(monkeypatch):
    evaluate_module = importlib.import_module("costmodel.evaluate")
    ds = _noisy(0.2, 5)
    seen = []
    spy = evaluate_module.task_metrics

    def record(dataset, idx, predicted):
        seen.append(np.asarray(predicted))
        return spy(dataset, idx, predicted)

    monkeypatch.setattr(evaluate_module, "task_metrics", record)
    noise_ceiling(ds, np.arange(len(ds)), draws=8)
    assert len(seen) == 8
    twin, first = len(ds) - 1, 0  # the twin compiled to `t0`'s executable in `p0`
    same_key_elsewhere = 5  # `t0` of `p1`: the same key in another program, its own timing
    for predicted in seen:
        assert predicted[twin] == predicted[first]
        assert predicted[same_key_elsewhere] != predicted[first]
        assert len(set(predicted[:5].tolist())) == 5


class _Measured(AbstractCostModel):
    """Predicts the measured runtimes of a dataset's records, in order (scored whole)."""

    times: np.ndarray

    def score_programs(self, graphs):
        return self.times[: len(graphs)]

    def score_nodes(self, node_opcode, node_feat):
        return np.zeros(len(node_opcode))


def test_evaluate_has_a_ceiling_row_and_rows_per_family():
    ds = _noisy(0.05, 30, families=("f", "g"))
    result = evaluate(ds, {"truth": _Measured(ds.runtime_s)}, np.arange(len(ds)), ("f", "g"))
    assert set(result.metrics) == {"truth", CEILING}
    assert set(result.by_family) == {"f", "g"}
    assert result.by_family["g"]["truth"].tile_groups == 1
    assert result.by_family["f"]["truth"].rewrite_tau == 1.0
    assert result.metrics[CEILING].tile_tau < 1.0
    table = result.table()
    assert "| all | within-run ceiling |" in table and "| g | truth | 1.000 | 0.0% | 1 |" in table
