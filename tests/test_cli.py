"""The `superopt` command line, through typer's test runner."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from costmodel.dataset import Dataset
from superopt import _corpus
from superopt._cli import app, parse_spec
from superopt._measure import PINNED_MALLOC, malloc_mode

runner = CliRunner()

_USER_FILE = """
import jax.numpy as jnp

def affine(x, w):
    return jnp.tanh(x @ w)

not_a_function = 3
"""

_DEMO_FILE = """
import jax.numpy as jnp

def tiny(x):
    return jnp.exp(x) * 2.0

def cases():
    return [("tiny", tiny, (jnp.ones(4),)), ("other", tiny, (jnp.ones(3),))]
"""


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPEROPT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_fns.py"
    path.write_text(textwrap.dedent(_USER_FILE))
    return path


def test_parse_spec():
    assert parse_spec("f32[128,256]") == ("float32", (128, 256))
    assert parse_spec("i32[ 7 ]") == ("int32", (7,))
    assert parse_spec("bf16[]") == ("bfloat16", ())


def test_demo_runs_one_example_and_prints_a_summary(tmp_path):
    folder = tmp_path / "demos"
    folder.mkdir()
    (folder / "demo_tiny.py").write_text(textwrap.dedent(_DEMO_FILE))
    result = runner.invoke(app, ["demo", "--examples-dir", str(folder), "-e", "tiny"])
    assert result.exit_code == 0, result.output
    assert "superopt: tiny" in result.stdout and "superopt demo" in result.stdout
    assert "other" not in result.stdout


def test_optimize_prints_report_and_source(user_file):
    target = f"{user_file}:affine"
    result = runner.invoke(app, ["optimize", target, "--args", "f32[8,4]", "--args", "f32[4,3]"])
    assert result.exit_code == 0, result.output
    assert "superopt: affine" in result.stdout
    # tanh(x @ w) has nothing to gain: the original function comes back, and says so.
    assert "returned the original function affine unchanged" in result.stdout

    result = runner.invoke(
        app, ["optimize", target, "--args", "f32[8,4]", "--args", "f32[4,3]", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["report"]["function"] == "affine"
    assert payload["report"]["verified"] is True and payload["report"]["status"] == "unchanged"
    assert payload["source"].startswith("# superopt returned the original function affine")


def test_cache_ls_and_clear(user_file):
    empty = runner.invoke(app, ["cache", "ls"])
    assert empty.exit_code == 0, empty.output
    assert "no entries" in empty.stdout
    ran = runner.invoke(
        app, ["optimize", f"{user_file}:affine", "-a", "f32[2,4]", "-a", "f32[4,3]"]
    )
    assert ran.exit_code == 0, ran.output
    listed = runner.invoke(app, ["cache", "ls"])
    assert listed.exit_code == 0 and "1 entries" in listed.stdout
    declined = runner.invoke(app, ["cache", "clear"], input="n\n")
    assert declined.exit_code == 1 and "nothing deleted" in declined.stdout
    cleared = runner.invoke(app, ["cache", "clear", "--yes"])
    assert cleared.exit_code == 0 and "removed 1 entries" in cleared.stdout
    assert "no entries" in runner.invoke(app, ["cache", "ls"]).stdout


def test_a_corrupt_cache_is_one_line_on_stderr(tmp_path, monkeypatch):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "superopt.sqlite").write_bytes(b"garbage" * 100)
    monkeypatch.setenv("SUPEROPT_CACHE_DIR", str(folder))
    result = runner.invoke(app, ["cache", "ls"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "not superopt's tuning cache" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["optimize", "missing.py:f", "-a", "f32[2]"], "error: no such file: missing.py"),
        (["optimize", "{file}:nope", "-a", "f32[2]"], "has no attribute 'nope'"),
        (["optimize", "{file}:not_a_function"], "is a int, not a function"),
        (["optimize", "{file}", "-a", "f32[2]"], "expected path/to/file.py:function"),
        (["optimize", "{file}:affine", "-a", "f32(2,3)"], "bad argument spec 'f32(2,3)'"),
        (["optimize", "{file}:affine", "-a", "q7[2]"], "bad argument spec 'q7[2]'"),
        (
            ["optimize", "{file}:affine", "-a", "f32[2,3]", "-a", "f32[5,3]"],
            "error: tracing affine",
        ),
        (
            ["optimize", "{file}:affine", "-a", "f32[2,4]", "-a", "f32[4,3]", "--budget", "-1"],
            "--budget is the number of candidates to time, 0 or more",
        ),
        (["demo", "--budget", "-1"], "--budget is the number of candidates to time, 0 or more"),
        # 2**55 float64 draws: more than any address space, so malloc refuses (MemoryError).
        (
            ["optimize", "{file}:affine", "-a", "f32[33554432,1073741824]", "-a", "f32[4,3]"],
            "argument spec 'f32[33554432,1073741824]' is too large",
        ),
        # Past numpy's own size limit (ValueError).
        (
            ["optimize", "{file}:affine", "-a", "f32[99999999999,99999999999]"],
            "argument spec 'f32[99999999999,99999999999]' is too large",
        ),
    ],
)
def test_bad_input_exits_1_with_one_clear_line(user_file, args, message):
    args = [a.replace("{file}", str(user_file)) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_python_dash_m_superopt_works():
    done = subprocess.run(
        [sys.executable, "-m", "superopt", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for command in ("demo", "optimize", "cache"):
        assert command in done.stdout


def test_collect_then_evaluate_and_train_need_a_dataset_file(tmp_path):
    db, npz = tmp_path / "corpus.sqlite", tmp_path / "corpus.npz"
    result = runner.invoke(
        app,
        ["collect", str(db), "--programs-per-family", "1", "--family", "elementwise",
         "--budget", "0.02", "--export", str(npz), "--no-pin-malloc"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 of 1 programs done" in result.output and npz.is_file()
    assert "of 1 programs in 1 families" in result.output
    again = ["collect", str(db), "--remeasure", "--budget", "0.02", "--export", str(npz),
             "--no-pin-malloc"]  # fmt: skip
    result = runner.invoke(app, again)
    assert result.exit_code == 0, result.output
    assert "1 of 1 programs done" in result.output
    result = runner.invoke(app, ["collect", str(tmp_path / "none.sqlite"), "--remeasure"])
    assert result.exit_code == 1 and "no store at" in result.stderr
    assert not (tmp_path / "none.sqlite").exists()
    for command in ("train", "evaluate"):
        result = runner.invoke(app, [command, str(tmp_path / "missing.npz")])
        assert result.exit_code == 1
        assert "missing.npz is not a file" in result.stderr


class _Restarted(Exception):
    pass


def test_collect_restarts_itself_with_the_allocator_pinned(tmp_path, monkeypatch):
    for name in PINNED_MALLOC:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("superopt._measure.malloc_mode", lambda environ=None: "default")
    monkeypatch.setattr(sys, "argv", ["superopt", "collect", str(tmp_path / "c.sqlite")])
    calls = []

    def execve(path, argv, env):
        calls.append((path, argv, env))
        raise _Restarted

    monkeypatch.setattr("os.execve", execve)
    result = runner.invoke(app, ["collect", str(tmp_path / "c.sqlite")])
    assert isinstance(result.exception, _Restarted)
    [(path, argv, env)] = calls
    assert path == sys.executable
    assert argv == [sys.executable, "-m", "superopt", "collect", str(tmp_path / "c.sqlite")]
    assert all(env[k] == v for k, v in PINNED_MALLOC.items())
    assert not (tmp_path / "c.sqlite").exists()
    # Not restarted when asked not to: it measures as it runs, and the rows say so.
    result = runner.invoke(
        app,
        ["collect", str(tmp_path / "c.sqlite"), "--no-pin-malloc", "--programs-per-family",
         "1", "--family", "elementwise", "--budget", "0.02", "--export", str(tmp_path / "c.npz")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    assert Dataset.load(tmp_path / "c.npz").meta["versions"]["malloc"] == _corpus.malloc_mode()
    # Not restarted when started pinned already.
    monkeypatch.setattr("superopt._measure.malloc_mode", lambda environ=None: "pinned")
    result = runner.invoke(app, ["collect", str(tmp_path / "c.sqlite"), "--remeasure"])
    assert result.exit_code == 0, result.output
    assert "1 of 1 programs done" in result.output and len(calls) == 1


def test_malloc_mode_reads_the_settings_glibc_started_with(monkeypatch):
    pinned = malloc_mode(PINNED_MALLOC)
    assert pinned in ("pinned", "other")
    if pinned == "other":
        return
    assert malloc_mode({}) == "default"
    assert malloc_mode({**PINNED_MALLOC, "MALLOC_ARENA_MAX": "2"}) == "default"
    # Settings made after startup are not the ones glibc read.
    started_with = malloc_mode()
    for name, value in PINNED_MALLOC.items():
        monkeypatch.setenv(name, value)
    assert malloc_mode() == started_with
    started = subprocess.run(
        [sys.executable, "-c", "from superopt._measure import malloc_mode; print(malloc_mode())"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert started.stdout.strip() == "pinned", started.stderr


def test_collect_rejects_an_unknown_family(tmp_path):
    result = runner.invoke(app, ["collect", str(tmp_path / "c.sqlite"), "--family", "nope"])
    assert result.exit_code == 1
    assert "nope" in result.stderr


def _one_error_line(result, *needles):
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: "), result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output and "Aborted" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_evaluate_png_is_checked_before_anything_runs(tmp_path, monkeypatch):
    """`--png` must end in .png, be no directory and not the dataset: checked up front,
    so the (garbage) dataset is never read and never overwritten."""
    import costmodel

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the evaluation ran")

    monkeypatch.setattr(costmodel, "run_evaluation", no_evaluation)
    data = tmp_path / "mydata.npz"
    data.write_bytes(b"not really a dataset")
    (tmp_path / "plots.png").mkdir()
    cases = [
        (["--png", str(data)], "the plot's file name must end in .png"),
        (["--png", str(tmp_path / "plot.txt")], "the plot's file name must end in .png"),
        (["--png", str(tmp_path / "plots.png")], "is a directory"),
        (["--png", str(data) + "/x.png"], "is not a directory"),
        (["--autotune", "--png", str(data)], "the plot's file name must end in .png"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["evaluate", str(data), *extra])
        _one_error_line(result, message)
        assert data.read_bytes() == b"not really a dataset"
    # A dataset that happens to end in .png, given as its own plot.
    as_png = tmp_path / "data.png"
    as_png.write_bytes(b"dataset bytes")
    for png in (as_png, tmp_path / "." / "data.png"):
        result = runner.invoke(app, ["evaluate", str(as_png), "--png", str(png)])
        _one_error_line(result, "is the dataset itself")
        assert as_png.read_bytes() == b"dataset bytes"


def _bad_datasets(folder: Path) -> dict[str, tuple[Path, str]]:
    """Tiny files that are not datasets, and what the error line must say about each."""
    (folder / "fns.py").write_text("def f(x):\n    return x\n")
    (folder / "random.npz").write_bytes(np.random.default_rng(0).bytes(2000))
    np.save(folder / "arr.npy", np.arange(3))
    (folder / "empty.npz").write_bytes(b"")
    np.savez(folder / "other.npz", a=np.arange(3))
    whole = (folder / "other.npz").read_bytes()
    (folder / "trunc.npz").write_bytes(whole[: len(whole) // 2])
    return {
        "py": (folder / "fns.py", "fns.py is not an .npz archive, not a superopt dataset"),
        "random": (folder / "random.npz", "random.npz is not an .npz archive"),
        "npy": (folder / "arr.npy", "arr.npy is a single NumPy array (.npy)"),
        "empty": (folder / "empty.npz", "empty.npz is empty"),
        "truncated": (folder / "trunc.npz", "trunc.npz is not a readable superopt dataset"),
        "other npz": (folder / "other.npz", "other.npz is an .npz archive but not a superopt"),
    }


@pytest.mark.parametrize("kind", ["py", "random", "npy", "empty", "truncated", "other npz"])
@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_a_file_that_is_no_dataset_is_one_line(tmp_path, command, kind):
    path, message = _bad_datasets(tmp_path)[kind]
    before = path.read_bytes()
    result = runner.invoke(app, [command, str(path)])
    _one_error_line(result, message)
    assert "pickled" not in result.stderr
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "break_it,message",
    [
        (lambda d: ((d / "model.json").unlink(), (d / "model.json").mkdir()),
         "model.json is not a readable cost-model metadata file (IsADirectoryError"),
        (lambda d: ((d / "model.eqx").unlink(), (d / "model.eqx").mkdir()),
         "model.eqx is corrupt or does not match"),
        (lambda d: (d / "model.json").write_text('{"config": 3}'), "config must be a JSON object"),
        (lambda d: (d / "analytical.json").write_text("{nope"),
         "analytical.json is not a readable analytical cost model (JSONDecodeError"),
        (lambda d: (d / "analytical.json").write_text("{}"),
         "analytical.json is not a readable analytical cost model"),
        (lambda d: (d / "analytical.json").write_bytes(b"\xff\xfe"), "UnicodeDecodeError"),
    ],
)  # fmt: skip
def test_a_broken_weights_folder_is_one_line(tmp_path, break_it, message):
    from costmodel.checkpoint import WEIGHTS_DIR

    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR / "cpu", weights)
    break_it(weights)
    data = tmp_path / "data.npz"
    data.write_bytes(b"never read")
    result = runner.invoke(app, ["evaluate", str(data), "--weights", str(weights)])
    _one_error_line(result, str(weights), message)
