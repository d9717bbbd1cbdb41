"""`superopt bench`: rows, JSON output, the CLI command, and a win with a huge margin.

The big cases (attention at 4096, the 32k cross-entropy, the transformer block, ...) are
only loaded and traced here; they are timed by `superopt bench` itself.
"""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

import superopt
from superopt._bench import (
    CASES,
    FLOOR,
    TARGETS,
    BenchRow,
    bench_case,
    geomean,
    load_case,
    run_bench,
    table,
)
from superopt._cli import app
from superopt._errors import SuperoptError


def test_run_bench_one_case_table_and_json(capsys):
    printed = []
    rows = run_bench(["sum_of_product"], budget_s=0.05, cost_model="flops", print_fn=printed.append)
    (row,) = rows
    assert isinstance(row, BenchRow) and row.name == "sum_of_product"
    assert row.verified and row.status == "optimized"
    assert "sum_of_dot" in row.rewrites
    assert row.jit_ms > 0 and row.superopt_ms > 0 and row.optimize_s > 0
    assert row.target == TARGETS["sum_of_product"] == 10.0
    assert row.rounds >= 10 and row.spread >= 0
    # Two jax.jit copies of one function: their ratio is noise around 1, never a speedup.
    assert 0.5 < row.aa_ratio < 2.0
    assert printed  # a rich table
    rows = run_bench(["sum_of_product"], budget_s=0.05, cost_model="flops", as_json=True)
    data = json.loads(capsys.readouterr().out)
    (jrow,) = data["rows"]
    assert jrow["name"] == "sum_of_product" and jrow["verified"]
    keys = {"jit_ms", "superopt_ms", "speedup", "aa_ratio", "optimize_s", "rewrites", "target"}
    assert set(jrow) >= keys
    assert jrow["met"] == rows[0].met and data["all_met"] == rows[0].met
    assert data["geomean_speedup"] == pytest.approx(rows[0].speedup)
    assert data["cost_model"] == "flops"


def test_matrix_chain_is_much_faster_with_the_default_model():
    fn, make_args = load_case("matrix_chain")
    row = bench_case("matrix_chain", fn, make_args(512), budget_s=0.2)
    assert row.verified and "dot_assoc" in row.rewrites
    assert row.predicted_ms is not None and row.predicted_ms > 0  # the learned model's
    # n³ against 2n² multiply-adds: a margin far beyond measurement noise.
    assert row.speedup >= 2.0, row


def test_every_case_loads_and_traces():
    assert len(CASES) == 11 and len(set(CASES)) == 11
    assert set(TARGETS) <= set(CASES)
    for name in CASES:
        fn, make_args = load_case(name)
        program = superopt.trace(fn, *make_args()).program
        assert program.count_ops(), name
    # The sizes: attention at sequence 4096, cross-entropy over 32k classes.
    assert load_case("attention")[1]()[0].shape[1] == 4096
    assert load_case("cross_entropy")[1]()[1].shape[1] == 32768


def test_table_marks_misses_and_geomean():
    rows = [
        BenchRow("matrix_chain", 10.0, 0.4, 25.0, 1.0, ("dot_assoc",), True, "optimized",
                 target=20.0),
        BenchRow("mlp", 1.0, 1.1, 0.9, 1.0, ("flash_attention[block=256]",), True, "optimized",
                 aa_ratio=0.93),
    ]  # fmt: skip
    assert rows[0].met and not rows[1].met and rows[1].target == FLOOR
    console = Console(width=200, record=True)
    console.print(table(rows, "learned"))
    text = console.export_text()
    assert ">= 20x ok" in text and "floor 0.95x MISS" in text and "1 missed" in text
    assert "A/A" in text and "0.93x" in text
    assert f"{geomean([25.0, 0.9]):.2f}x" in text
    assert "flash_attention[block=256]" in text  # the chosen tile size is shown


def test_unknown_case_and_geomean():
    with pytest.raises(SuperoptError, match="no benchmark case named 'nope'"):
        run_bench(["nope"])
    assert geomean([2.0, 8.0]) == pytest.approx(4.0)


def test_cli_bench_json():
    result = CliRunner().invoke(
        app, ["bench", "--case", "distributivity", "--budget", "0.05", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["rows"][0]["name"] == "distributivity" and data["rows"][0]["verified"]
    assert data["cost_model"] == "learned"  # the setting is the default
