"""The autotuner experiment on a small synthetic dataset, and `superopt tune`."""

from __future__ import annotations

import json
import textwrap
import zlib

import numpy as np
import pytest
from typer.testing import CliRunner

from costmodel.autotune import autotune_curves, curves_png, evaluate_autotune, groups_of
from costmodel.dataset import Dataset, Record
from costmodel.features import NUM_CONFIG, NUM_FEATURES, GraphArrays
from costmodel.model import AbstractCostModel
from superopt._cli import app

runner = CliRunner()


def _graph(runtime):
    # The runtime rides in the first config feature, so a test model can read it back.
    config = np.zeros(NUM_CONFIG, np.float32)
    config[0] = runtime
    return GraphArrays(
        np.zeros(2, np.int32),
        np.zeros((2, NUM_FEATURES), np.float32),
        np.asarray([[0, 1]], np.int32),
        config,
    )


def _dataset():
    records = [
        Record("f", "p0", f"t{i}", _graph(t), t, 0.0, "p0/tile")
        for i, t in enumerate([4.0, 1.0, 3.0, 2.0])
    ]
    records += [Record("f", "p1", f"r{i}", _graph(t), t) for i, t in enumerate([2.0, 10.0, 2.06])]
    records += [Record("g", "p2", "only", _graph(1.0), 1.0)]  # a group of one is no group
    return Dataset.from_records(records, {"backend": "cpu"})  # fmt: skip


class _Reads(AbstractCostModel):
    sign: float = 1.0

    def score_programs(self, graphs):
        return np.asarray([self.sign * g.config_feat[0] for g in graphs], np.float64)

    def score_nodes(self, node_opcode, node_feat):
        return np.zeros(len(node_opcode))


def test_groups_are_tile_groups_and_programs_with_two_or_more_variants():
    ds = _dataset()
    groups = groups_of(ds, np.arange(len(ds)))
    assert [list(g) for g in groups["tile"]] == [[0, 1, 2, 3]]
    assert [list(g) for g in groups["rewrite"]] == [[0, 1, 2, 3], [4, 5, 6]]


def test_oracle_reversed_and_random_proposers():
    ds = _dataset()
    idx = np.arange(len(ds))
    truth = ds.runtime_s[idx]
    result = autotune_curves(ds, idx, {"oracle": truth, "reversed": -truth}, random_orders=200)
    assert result.steps == (1, 2, 4, 8, 16)
    oracle = result.row("tile", "oracle")
    assert oracle.groups == 1 and oracle.within == (1.0,) * 5 and oracle.to_reach == 1.0
    assert oracle.slowdown == (0.0,) * 5
    worst = result.row("tile", "reversed")  # measures 4, 3, 2, 1 seconds in that order
    assert worst.within == (0.0, 0.0, 1.0, 1.0, 1.0) and worst.to_reach == 4.0
    assert worst.slowdown[:3] == pytest.approx((3.0, 2.0, 0.0))
    # p1 reversed measures 10 s, then 2.06 s: within 5% of its best, 2 s, after two.
    rewrite = result.row("rewrite", "reversed")
    assert rewrite.groups == 2 and rewrite.within[:3] == (0.0, 0.5, 1.0)
    assert rewrite.slowdown[0] == pytest.approx((3.0 + 4.0) / 2)  # 4 s over 1, 10 s over 2
    assert rewrite.slowdown[3:] == (0.0, 0.0)  # every variant measured: the best is found
    random = result.row("tile", "random")
    assert random.within[0] == pytest.approx(0.25, abs=0.1)  # one good tile in four
    assert random.slowdown[0] == pytest.approx(1.5, abs=0.3)  # mean of 4, 1, 3, 2 over 1
    assert random.within[2:] == (1.0, 1.0, 1.0)  # a group of four, all measured
    assert 1.0 < random.to_reach < 4.0
    table = result.table()
    assert "| tile (1) | oracle | 100% (0.0%) |" in table and "| rewrite (2) | random |" in table
    assert "within 5% of the best" in table


def test_evaluate_autotune_scores_models_and_draws_the_plot(tmp_path):
    ds = _dataset()
    models = {"learned": _Reads(), "analytical": _Reads(sign=-1.0)}
    result = evaluate_autotune(ds, models, np.arange(len(ds)), ("f",), png=tmp_path / "a.png")
    assert result.row("tile", "learned").within[0] == 1.0
    assert result.row("tile", "analytical").within[0] == 0.0
    assert [r.strategy for r in result.rows[:3]] == ["learned", "analytical", "random"]
    data = (tmp_path / "a.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (2 * 260, 2 * 260)
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    rows = np.frombuffer(zlib.decompress(data[start : start + length]), np.uint8)
    pixels = rows.reshape(height, 1 + width * 3)[:, 1:].reshape(height, width, 3)
    for color in ((220, 50, 47), (38, 139, 210), (133, 153, 0)):  # one curve per proposer
        assert (pixels == color).all(-1).sum() > 20


def test_a_variant_compiled_alike_to_one_measured_costs_no_measurement():
    records = [
        Record("f", "p", name, _graph(t), t, 0.0, "", key)
        for name, t, key in [("a", 3.0, "x"), ("a2", 3.0, "x"), ("b", 2.0, "y"), ("c", 1.0, "z")]
    ]
    ds = Dataset.from_records(records)
    worst = -np.asarray([4.0, 3.0, 2.0, 1.0])  # measures a, a2, b, c in that order
    result = autotune_curves(ds, np.arange(4), {"m": worst})
    # a2 compiles to a's executable: c, the best, is the third measurement, not the fourth.
    assert result.row("rewrite", "m").to_reach == 3.0
    assert result.row("rewrite", "m").within[:3] == (0.0, 0.0, 1.0)


def test_curves_png_without_groups_of_a_kind(tmp_path):
    ds = Dataset.from_records(
        [Record("f", "p", f"v{i}", _graph(t), t) for i, t in enumerate([2.0, 1.0])]
    )
    result = autotune_curves(ds, np.arange(2), {"m": ds.runtime_s})
    assert result.row("tile", "m").groups == 0 and np.isnan(result.row("tile", "m").to_reach)
    assert "| tile (0) | m | - |" in result.table()
    assert curves_png(tmp_path / "x.png", result).stat().st_size > 0  # fmt: skip


def test_superopt_evaluate_autotune_on_the_shipped_weights(tmp_path):
    path = _dataset().save(tmp_path / "ds.npz")
    png = tmp_path / "curves.png"
    result = runner.invoke(app, ["evaluate", str(path), "--autotune", "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert "learned" in result.output and "analytical" in result.output
    assert "random" in result.output and "k=16" in result.output
    assert png.read_bytes().startswith(b"\x89PNG")


_USER_FILE = """
import jax.numpy as jnp

def chain(a, b, v):
    return (a @ b) @ v
"""


def test_superopt_tune_prints_the_timed_candidates(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPEROPT_CACHE_DIR", str(tmp_path / "cache"))
    user = tmp_path / "user_fns.py"
    user.write_text(textwrap.dedent(_USER_FILE))
    argv = ["tune", f"{user}:chain", "-a", "f32[64,64]", "-a", "f32[64,64]", "-a", "f32[64,2]",
            "--budget", "2", "--cost-model", "analytical"]  # fmt: skip
    result = runner.invoke(app, argv, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "timed candidates" in result.output and "jax.jit" in result.output
    again = runner.invoke(app, [*argv, "--json"])
    assert again.exit_code == 0, again.output
    report = json.loads(again.output)["report"]
    assert report["cached"] and 1 <= len(report["measurements"]) <= 2
    assert all(m["measured_s"] > 0 and m["reference_s"] > 0 for m in report["measurements"])
    bad = runner.invoke(app, ["tune", f"{user}:chain", "--budget", "0"])
    assert bad.exit_code == 1 and "at least 1" in bad.output
