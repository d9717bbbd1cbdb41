"""Every example in `examples/` runs (its `main()`), and its results are verified."""

from __future__ import annotations

from pathlib import Path

import pytest

import superopt
from superopt._cli import load_module

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
EXAMPLES = [p for p in EXAMPLES if p.name != "__init__.py"]


def test_there_are_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUPEROPT_CACHE_DIR", str(tmp_path))
    module = load_module(path)
    assert module.__doc__ and len(module.__doc__) > 80, "an example starts by saying what it shows"
    results = module.main()
    out = capsys.readouterr().out
    assert "superopt:" in out
    for opt in results or []:
        assert isinstance(opt, superopt.Optimized)
        assert opt.report.verified or opt.report.status == "fallback"
