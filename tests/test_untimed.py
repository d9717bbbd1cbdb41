"""The untimed-choice experiment (`superopt evaluate --untimed`) on a small dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from costmodel.dataset import Dataset, Record
from costmodel.features import NUM_CONFIG, NUM_FEATURES, GraphArrays
from costmodel.model import AbstractCostModel
from costmodel.untimed import evaluate_untimed, table
from superopt._cli import app


def _graph(predicted):
    # The model's prediction rides in the first config feature; XLA's costs are known.
    config = np.zeros(NUM_CONFIG, np.float32)
    config[0] = predicted
    return GraphArrays(
        np.zeros(2, np.int32),
        np.zeros((2, NUM_FEATURES), np.float32),
        np.asarray([[0, 1]], np.int32),
        config,
        np.ones(3, np.float32),
    )


class _Reads(AbstractCostModel):
    def score_programs(self, graphs):
        # Scored as optimize scores candidates: without XLA's costs.
        assert all(np.isnan(g.xla_cost).all() for g in graphs)
        return np.asarray([g.config_feat[0] for g in graphs], np.float64)

    def score_nodes(self, node_opcode, node_feat):
        return np.zeros(len(node_opcode))


def _dataset():
    rows = [
        # (program, variant, predicted, measured)
        ("p0", "ref", 2.0, 2.0), ("p0", "fast", 1.0, 1.0),  # predicted 50% faster: 2x
        ("p1", "ref", 1.0, 1.0), ("p1", "close", 0.95, 1.2),  # predicted 5% faster: slower
        ("p1", "other", 1.5, 0.9),
        ("p2", "a", 1.0, 1.0), ("p2", "b", 0.5, 0.5),  # no reference: not counted
        ("p3", "ref", 1.0, 1.0),  # nothing to choose
    ]  # fmt: skip
    records = [Record("f", p, v, _graph(pred), t) for p, v, pred, t in rows]
    return Dataset.from_records(records, {"backend": "cpu"})


def test_the_margin_keeps_the_reference_where_the_predicted_gain_is_small():
    ds = _dataset()
    rows = evaluate_untimed(ds, _Reads(), {"all": np.arange(len(ds))}, margins=(0.0, 0.1, 0.6))
    none, some, large = rows
    assert [r.programs for r in rows] == [2, 2, 2]
    assert none.rewritten == 1.0 and none.slower == 0.5
    assert none.speedup == pytest.approx(np.sqrt(2.0 / 1.2))
    assert (
        some.rewritten == 0.5 and some.slower == 0.0 and some.speedup == pytest.approx(np.sqrt(2.0))
    )
    assert large.rewritten == 0.0 and large.speedup == pytest.approx(1.0)
    # The best variant of p1 (0.9) is none the model would pick.
    assert all(r.ceiling == pytest.approx(np.sqrt(2.0 / 0.9)) for r in rows)
    text = table(rows, chosen=0.1)
    assert "| all | 10% (used) | 2 | 50.0% | 1.414x | 0.0% | 1.491x |" in text


def test_the_cli_refuses_two_experiments_or_a_plot():
    runner = CliRunner()
    corpus = str(Path(__file__).parents[1] / "costmodel" / "data" / "corpus-cpu.npz")
    for extra in (["--autotune"], ["--png", "x.png"]):
        result = runner.invoke(app, ["evaluate", corpus, "--untimed", *extra])
        assert result.exit_code != 0
        assert ("pick one" if extra == ["--autotune"] else "draws no plot") in result.output
