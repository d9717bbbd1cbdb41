"""The `superopt` command line: `demo`, `optimize`, `tune`, `bench`, `collect`, `train`,
`evaluate`, `cache`.

Errors the user can fix (a bad path, a bad argument spec, a function superopt cannot
trace, an unreadable cache) print one line to stderr and exit with status 1, without a
traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._errors import SuperoptError

app = typer.Typer(
    name="superopt",
    help="An embedded superoptimizer for JAX: e-graph rewrites picked by a cost model.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="Inspect or clear the tuning cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

_DTYPES = {
    "f16": "float16",
    "bf16": "bfloat16",
    "f32": "float32",
    "f64": "float64",
    "c64": "complex64",
    "i8": "int8",
    "i16": "int16",
    "i32": "int32",
    "i64": "int64",
    "u8": "uint8",
    "u32": "uint32",
    "bool": "bool",
}

_SPEC_RE = re.compile(r"^\s*([a-z]+[0-9]*)\s*\[\s*([0-9,\s]*)\]\s*$")

_SPEC_HELP = (
    "an argument spec is a dtype and a shape, e.g. f32[128,256], i32[128] or f32[] for a "
    "scalar; dtypes: " + ", ".join(_DTYPES)
)


class UsageError(Exception):
    """A mistake on the command line: a bad path, function name or argument spec."""


def parse_spec(spec: str) -> tuple[str, tuple[int, ...]]:
    """Parse an argument spec such as `"f32[128,256]"`.

    **Arguments:**

    - `spec`: a short dtype name and a bracketed shape; `f32[]` is a scalar.

    **Returns:** the numpy dtype name and the shape.
    """
    match = _SPEC_RE.match(spec)
    if match is None or match.group(1) not in _DTYPES:
        raise UsageError(f"bad argument spec {spec!r}: {_SPEC_HELP}")
    dims = [d.strip() for d in match.group(2).split(",") if d.strip()]
    return _DTYPES[match.group(1)], tuple(int(d) for d in dims)


def example_args(specs: list[str], seed: int = 0) -> tuple[Any, ...]:
    """Random arrays for argument specs (normal floats, small non-negative integers).

    **Arguments:**

    - `specs`: argument specs as accepted by `parse_spec`.
    - `seed`: the random seed, so that runs are repeatable.

    **Returns:** one JAX array per spec.
    """
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    out = []
    for spec in specs:
        dtype, shape = parse_spec(spec)
        try:
            if dtype == "bool":
                value = rng.integers(0, 2, shape).astype(bool)
            elif dtype.startswith(("int", "uint")):
                value = rng.integers(0, 8, shape)
            else:
                value = rng.standard_normal(shape)
            out.append(jnp.asarray(value, dtype=dtype))
        except (MemoryError, ValueError, OverflowError) as err:
            raise UsageError(_too_large(spec, dtype, shape, err)) from None
        except RuntimeError as err:  # XLA's out-of-memory error is a RuntimeError
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
            raise UsageError(_too_large(spec, dtype, shape, err)) from None
    return tuple(out)


def _too_large(spec: str, dtype: str, shape: tuple[int, ...], err: BaseException) -> str:
    import jax.numpy as jnp

    count = math.prod(shape)
    size = count * jnp.dtype(dtype).itemsize
    return (
        f"argument spec {spec!r} is too large: {count:,} elements ({_bytes(size)}) cannot be "
        f"allocated ({type(err).__name__})"
    )


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def load_function(target: str) -> Callable[..., Any]:
    """Load `path/to/file.py:function` (a dotted name after the colon is followed).

    **Arguments:**

    - `target`: the file and the function's name, separated by a colon.

    **Returns:** the function.
    """
    path_text, sep, name = target.rpartition(":")
    if not sep or not path_text or not name:
        raise UsageError(f"expected path/to/file.py:function, got {target!r}")
    module = load_module(Path(path_text))
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{path_text} has no attribute {name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{target} is a {type(obj).__name__}, not a function")
    return obj


def load_module(path: Path) -> ModuleType:
    """Import a Python file by path, under a private module name."""
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"_superopt_user_{stem}_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    # Registered before running so that dataclasses and pickling inside it can find it.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise UsageError(f"importing {path} failed: {type(err).__name__}: {err}") from err
    return module


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and exit status 1."""
    try:
        yield
    except (SuperoptError, UsageError) as err:
        message = str(err).strip().splitlines()
        typer.echo(f"error: {message[0] if message else type(err).__name__}", err=True)
        raise typer.Exit(1) from None


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _examples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "examples"


@app.command()
def demo(
    example: Annotated[
        list[str] | None,
        typer.Option("--example", "-e", help="Run only these examples (file or case name)."),
    ] = None,
    examples_dir: Annotated[
        Path | None, typer.Option(help="Folder of demo_*.py files (default: the bundled ones).")
    ] = None,
    budget: Annotated[
        int, typer.Option(help="Candidates to time per program (0: trust the model).")
    ] = 0,
    cost_model: Annotated[str, typer.Option(help="learned or analytical.")] = "learned",
) -> None:
    """Optimize the bundled example programs and print what happened to each."""
    import superopt

    with _clean_errors():
        _check_budget(budget)
        folder = examples_dir or _examples_dir()
        files = sorted(folder.glob("demo_*.py")) if folder.is_dir() else []
        if not files:
            raise UsageError(
                f"no demo_*.py files in {folder}; run from a source checkout of superopt "
                "or pass --examples-dir"
            )
        console = _console()
        rows = []
        for path in files:
            module = load_module(path)
            cases = getattr(module, "cases", None)
            if cases is None:
                raise UsageError(f"{path} defines no cases() function")
            for name, fn, args in cases():
                if example and name not in example and path.stem not in example:
                    continue
                start = time.perf_counter()
                opt = superopt.optimize(fn, *args, budget=budget, cost_model=cost_model)
                elapsed = time.perf_counter() - start
                console.print(opt.report)
                rows.append((name, opt.report, elapsed))
        if not rows:
            raise UsageError(f"no example named {', '.join(example or [])!r} in {folder}")
        console.print(_summary(rows))


def _summary(rows: list[tuple[str, Any, float]]) -> Table:
    table = Table(title="superopt demo")
    table.add_column("program", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for column in ("rewrites", "verified", "speedup", "ops", "time"):
        table.add_column(column)
    for name, report, elapsed in rows:
        speed = "-" if report.speedup is None else f"{report.speedup:.2f}x"
        ops = f"{_ops(report.ops_before)} -> {_ops(report.ops_after)}"
        table.add_row(
            Text(name),
            report.status,
            str(len(report.rewrites)),
            "yes" if report.verified else "no",
            speed,
            ops,
            f"{elapsed:.2f}s",
        )
    return table


def _ops(counts: dict[str, int]) -> int:
    return sum(n for op, n in counts.items() if op not in ("input", "const", "literal"))


@app.command()
def optimize(
    target: Annotated[str, typer.Argument(help="path/to/file.py:function")],
    args: Annotated[
        list[str] | None,
        typer.Option("--args", "-a", help="One example argument, e.g. f32[128,256]; repeat."),
    ] = None,
    budget: Annotated[int, typer.Option(help="Candidates to time (0: trust the model).")] = 0,
    cost_model: Annotated[str, typer.Option(help="learned or analytical.")] = "learned",
    seed: Annotated[int, typer.Option(help="Seed of the random example arguments.")] = 0,
    cache: Annotated[bool, typer.Option(help="Use the tuning cache.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Optimize one function for random arguments of the given shapes."""
    import superopt

    with _clean_errors():
        _check_budget(budget)
        fn = load_function(target)
        values = example_args(args or [], seed)
        opt = superopt.optimize(fn, *values, budget=budget, cost_model=cost_model, cache=cache)
        if as_json:
            payload = {"report": opt.report.to_dict(), "source": opt.source}
            typer.echo(json.dumps(payload, indent=2, sort_keys=True))
            return
        console = _console()
        console.print(opt.report)
        console.print(Text(opt.source))


def _check_budget(budget: int) -> None:
    if budget < 0:
        raise UsageError(
            f"--budget is the number of candidates to time, 0 or more (0 trusts the cost "
            f"model), got {budget}"
        )


@app.command()
def tune(
    target: Annotated[str, typer.Argument(help="path/to/file.py:function")],
    args: Annotated[
        list[str] | None,
        typer.Option("--args", "-a", help="One example argument, e.g. f32[128,256]; repeat."),
    ] = None,
    budget: Annotated[int, typer.Option(help="Most candidates to time on this machine.")] = 4,
    cost_model: Annotated[str, typer.Option(help="learned or analytical.")] = "learned",
    seed: Annotated[int, typer.Option(help="Seed of the random example arguments.")] = 0,
    cache: Annotated[bool, typer.Option(help="Use the tuning cache.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Autotune one function: time the model's best candidates against jax.jit, keep the
    fastest that is not slower, and print every candidate's measured time."""
    import superopt

    with _clean_errors():
        if budget < 1:
            raise UsageError(f"--budget must be at least 1 to tune, got {budget}")
        fn = load_function(target)
        values = example_args(args or [], seed)
        opt = superopt.optimize(fn, *values, budget=budget, cost_model=cost_model, cache=cache)
        report = opt.report
        if as_json:
            payload = {"report": report.to_dict(), "source": opt.source}
            typer.echo(json.dumps(payload, indent=2, sort_keys=True))
            return
        console = _console()
        console.print(report)
        if not report.measurements:
            console.print(
                Text("no candidate was timed: " + (report.reason or "the search found none"))
            )


@app.command()
def bench(
    case: Annotated[
        list[str] | None, typer.Option("--case", "-c", help="Run only these cases.")
    ] = None,
    budget: Annotated[float, typer.Option(help="Seconds of timed rounds per case.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
    cost_model: Annotated[str, typer.Option(help="learned, analytical or flops.")] = "learned",
) -> None:
    """Optimize the example programs and time them side by side against jax.jit."""
    from ._bench import run_bench

    with _clean_errors():
        run_bench(case or None, budget_s=budget, as_json=as_json, cost_model=cost_model)


@app.command()
def collect(
    db: Annotated[Path, typer.Argument(help="SQLite measurement store (created or resumed).")],
    programs_per_family: Annotated[int, typer.Option(help="Programs to generate per family.")] = 32,
    family: Annotated[
        list[str] | None, typer.Option("--family", "-f", help="Only these families.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the program generator.")] = 0,
    budget: Annotated[float, typer.Option(help="Seconds of timed rounds per group.")] = 1.0,
    time_limit: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (resume later).")
    ] = None,
    export: Annotated[
        Path | None, typer.Option(help="Also export the store to this .npz dataset.")
    ] = None,
    refeaturize: Annotated[
        bool,
        typer.Option(
            help="Export with features recomputed by this version (the times are kept; "
            "variants that no longer rebuild to the stored graph are left out)."
        ),
    ] = False,
    remeasure: Annotated[
        bool,
        typer.Option(
            help="Measure the stored programs (of --family, or all) a second time instead "
            "of collecting new ones; `superopt evaluate` scores the second run against the "
            "first."
        ),
    ] = False,
    pin_malloc: Annotated[
        bool,
        typer.Option(
            help="Measure with glibc's allocator pinned (one arena, mmap threshold 32 MiB, no "
            "trimming), restarting the command with those settings if need be, so that a "
            "call's page faults do not depend on what ran before it."
        ),
    ] = True,
) -> None:
    """Measure programs and their variants into a resumable store (the cost-model corpus).

    `--time-limit 0 --export out.npz --refeaturize` re-exports a store after a change to
    the features without measuring anything. Each row records how the allocator ran.
    """
    from . import _corpus
    from ._measure import PINNED_MALLOC, malloc_mode

    with _clean_errors():
        unknown = sorted(set(family or ()) - set(_corpus.FAMILIES))
        if unknown:
            raise UsageError(
                f"unknown program families {unknown}; known: {', '.join(_corpus.FAMILIES)}"
            )
        if remeasure and not db.exists():
            raise UsageError(f"no store at {db} to measure again; collect into it first")
        if pin_malloc and malloc_mode() == "default" and time_limit != 0:
            # glibc reads its settings at startup only: run the same command again with them.
            sys.stdout.flush()
            argv = [sys.executable, "-m", "superopt", *sys.argv[1:]]
            os.execve(sys.executable, argv, {**os.environ, **PINNED_MALLOC})
        if remeasure:
            stats = _corpus.remeasure(
                db, families=family or None, budget_s=budget, time_limit_s=time_limit
            )
        else:
            stats = _corpus.collect(
                db,
                programs_per_family=programs_per_family,
                families=family or None,
                seed=seed,
                budget_s=budget,
                time_limit_s=time_limit,
            )
        typer.echo(stats.summary())
        if export is not None:
            dataset = _corpus.export(db, export, refeaturize=refeaturize)
            dropped = dataset.meta.get("refeaturize_dropped")
            note = f" ({dropped} variants no longer rebuild and were left out)" if dropped else ""
            card = dataset.summary()
            typer.echo(
                f"exported {card['variants']} variants ({card['executables']} executables) of "
                f"{card['programs']} programs in {card['families']} families, "
                f"{card['tile_groups']} tile groups, median relative spread "
                f"{card['median_relative_spread']:.3f}, to {export}{note}"
            )


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(help="The .npz dataset to train on.")],
    out: Annotated[
        Path | None, typer.Option(help="Checkpoint folder (default: the shipped weights).")
    ] = None,
    time_limit: Annotated[float, typer.Option(help="Stop training after this many seconds.")] = (
        25 * 60.0
    ),
) -> None:
    """Train the learned cost model (and fit the analytical baseline) on a dataset."""
    from costmodel import run_training

    with _clean_errors():
        _check_file(dataset)
        result = run_training(dataset, out, time_limit_s=time_limit)
        typer.echo(result.summary())


@app.command()
def evaluate(
    dataset: Annotated[Path, typer.Argument(help="The .npz dataset to evaluate on.")],
    weights: Annotated[
        Path | None, typer.Option(help="Checkpoint folder (default: the shipped weights).")
    ] = None,
    png: Annotated[
        Path | None,
        typer.Option(
            help="Write a PNG here: the predicted-vs-measured scatter, or with --autotune "
            "the autotuning curves."
        ),
    ] = None,
    autotune: Annotated[
        bool,
        typer.Option(
            "--autotune",
            help="Run the autotuner experiment instead: the best runtime found after "
            "1, 2, 4, 8, 16 measurements proposed by each model and at random.",
        ),
    ] = False,
    untimed: Annotated[
        bool,
        typer.Option(
            "--untimed",
            help="Replay optimize's untimed choice instead (budget=0: the model's best "
            "variant replaces the program only if predicted a margin faster) on every "
            "program with a reference variant, for several margins.",
        ),
    ] = False,
) -> None:
    """Compare the learned and analytical models on the held-out families of a dataset."""
    from costmodel import run_evaluation

    with _clean_errors():
        # Everything that can be checked is checked before the (long) evaluation runs.
        _check_file(dataset)
        if png is not None:
            _check_png(png, dataset)
        if weights is not None:
            _check_weights(weights)
        if autotune and untimed:
            raise UsageError("--autotune and --untimed are two experiments: pick one")
        if untimed and png is not None:
            raise UsageError("--untimed prints a table and draws no plot: leave out --png")
        if untimed:
            from costmodel.untimed import run_untimed

            from ._search import MIN_PREDICTED_GAIN

            run_untimed(dataset, weights, chosen=MIN_PREDICTED_GAIN)
            return
        if autotune:
            from costmodel.autotune import run_autotune

            run_autotune(dataset, weights, png=png, print_table=True)
            return
        run_evaluation(dataset, weights, png=png, print_table=True)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise UsageError(f"{path} is not a file")


def _check_png(png: Path, dataset: Path) -> None:
    """`--png` names a new or existing .png file that is not the dataset itself."""
    if png.suffix.lower() != ".png":
        raise UsageError(f"--png {png}: the plot's file name must end in .png")
    if png.is_dir():
        raise UsageError(f"--png {png} is a directory; give a file name ending in .png")
    if png.resolve() == dataset.resolve() or (png.exists() and png.samefile(dataset)):
        raise UsageError(f"--png {png} is the dataset itself; writing the plot would destroy it")
    parent = png.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"--png {png}: {parent} is not a directory")


def _check_weights(weights: Path) -> None:
    """A `--weights` folder holds loadable learned weights and, if any, a readable fit of
    the analytical model (each problem is a `WeightsError` naming the file)."""
    from costmodel.checkpoint import load_analytical, load_checkpoint

    load_checkpoint(weights)
    load_analytical(weights)


@cache_app.command("ls")
def cache_ls() -> None:
    """List the entries of the tuning cache."""
    from ._cache import TuningCache

    with _clean_errors(), TuningCache() as store:
        entries = list(store.entries())
        console = _console()
        console.print(Text(f"tuning cache: {store.path}"))
        if not entries:
            console.print("no entries")
            return
        table = Table()
        for column in ("kind", "key", "created", "summary"):
            table.add_column(column)
        for entry in entries:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.created))
            table.add_row(entry.kind, Text(entry.key[:24]), created, Text(entry.summary))
        console.print(table)
        console.print(f"{len(entries)} entries")


@cache_app.command("clear")
def cache_clear(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every entry of the tuning cache."""
    from ._cache import TuningCache

    with _clean_errors(), TuningCache() as store:
        if not yes and not typer.confirm(f"Delete all entries of {store.path}?"):
            typer.echo("nothing deleted")
            raise typer.Exit(1)
        removed = store.clear()
        typer.echo(f"removed {removed} entries")


def main() -> None:
    """Run the `superopt` command line."""
    app()
