"""`superopt bench`: rows, JSON output, the CLI command, and a win with a huge margin."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from superopt._bench import CASES, BenchRow, bench_case, geomean, load_case, run_bench
from superopt._cli import app
from superopt._errors import SuperoptError


def test_run_bench_one_case_table_and_json(capsys):
    printed = []
    rows = run_bench(["sum_of_product"], budget_s=0.05, print_fn=printed.append)
    (row,) = rows
    assert isinstance(row, BenchRow) and row.name == "sum_of_product"
    assert row.verified and row.status == "optimized"
    assert "sum_of_dot" in row.rewrites
    assert row.jit_ms > 0 and row.superopt_ms > 0 and row.optimize_s > 0
    assert printed  # a rich table
    rows = run_bench(["sum_of_product"], budget_s=0.05, as_json=True)
    data = json.loads(capsys.readouterr().out)
    assert data["rows"][0]["name"] == "sum_of_product" and data["rows"][0]["verified"]
    assert data["geomean_speedup"] == pytest.approx(rows[0].speedup)


def test_matrix_chain_is_much_faster():
    fn, make_args = load_case("matrix_chain")
    row = bench_case("matrix_chain", fn, make_args(512), budget_s=0.2)
    assert row.verified and "dot_assoc" in row.rewrites
    # n³ against 2n² multiply-adds: a margin far beyond measurement noise.
    assert row.speedup >= 2.0, row


def test_unknown_case_and_geomean():
    with pytest.raises(SuperoptError, match="no benchmark case named 'nope'"):
        run_bench(["nope"])
    assert geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert len(CASES) == 5


def test_cli_bench_json():
    result = CliRunner().invoke(
        app, ["bench", "--case", "distributivity", "--budget", "0.05", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["rows"][0]["name"] == "distributivity" and data["rows"][0]["verified"]
