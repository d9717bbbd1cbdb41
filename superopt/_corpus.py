"""The corpus for the learned cost model: program families → variants → timings → dataset.

Each family builds a random program (shapes and dtypes drawn from a seeded generator, sized
so that a call takes roughly 50 us - 50 ms on one CPU core) and its equivalent variants:
hand-written rewrites of the kind the e-graph finds, the e-graph's own variants
(`superopt.variants`), and tile-size variants of the fused ops (`chunked_xent`,
`flash_attention`) at 5-8 tile sizes each. Every variant of a program computes the same
value (up to float rounding), so a group's timings compare real alternatives. All variants
of one program are timed together: interleaved, each compiled once, variants that compile to
the same executable timed once (they share that timing), stopping early once every median
is known to 1%. They are stored in a SQLite database (WAL mode), one row per variant.
`collect` is resumable: a program whose variants are stored is skipped. `export` writes the
rows to a `costmodel.dataset.Dataset` `.npz`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costmodel.dataset import Dataset, Record
from costmodel.features import TILE_PARAMS, GraphArrays, featurize_program

from ._codegen import to_callable
from ._families import FAMILIES, Spec
from ._measure import Timing, malloc_mode, timed_rounds
from ._trace import trace
from .ir import Node, Params, Program

_SCHEMA = """
CREATE TABLE IF NOT EXISTS programs (
    program_id TEXT PRIMARY KEY, family TEXT, seed INTEGER, variants INTEGER,
    seconds REAL, error TEXT
);
CREATE TABLE IF NOT EXISTS variants (
    program_id TEXT, variant_id TEXT, family TEXT, tile_group TEXT,
    node_opcode BLOB, node_feat BLOB, edge_index BLOB, config_feat BLOB, xla_cost BLOB,
    median_s REAL, p25_s REAL, p75_s REAL, spread REAL, n INTEGER,
    backend TEXT, device_kind TEXT, versions TEXT, executable TEXT DEFAULT '', faults REAL,
    PRIMARY KEY (program_id, variant_id)
);
CREATE TABLE IF NOT EXISTS repeats (
    program_id TEXT, variant_id TEXT, median_s REAL, spread REAL, n INTEGER, executable TEXT,
    faults REAL, PRIMARY KEY (program_id, variant_id)
);
"""

# The columns of a row `_measure_program` returns, in order.
_VARIANT_COLUMNS = (
    "program_id", "variant_id", "family", "tile_group", "node_opcode", "node_feat",
    "edge_index", "config_feat", "xla_cost", "median_s", "p25_s", "p75_s", "spread", "n",
    "backend", "device_kind", "versions", "executable", "faults",
)  # fmt: skip
_ROW = {name: i for i, name in enumerate(_VARIANT_COLUMNS)}
_INSERT_VARIANT = (
    f"INSERT OR REPLACE INTO variants ({', '.join(_VARIANT_COLUMNS)}) "
    f"VALUES ({','.join('?' * len(_VARIANT_COLUMNS))})"
)
_REPEAT_COLUMNS = ("program_id", "variant_id", "median_s", "spread", "n", "executable", "faults")

# ------------------------------------------------------------------ variants


@dataclass(frozen=True)
class Variant:
    """One variant to measure: its id, program, callable and tile group (`""` if none)."""

    variant_id: str
    program: Program
    fn: Callable[..., Any]
    tile_group: str = ""


def _retile(program: Program, tile: int) -> Program:
    """`program` with every tile parameter of its fused ops set to `tile`."""
    memo: dict[int, Node] = {}
    for node in program.nodes():
        args = tuple(memo[id(a)] for a in node.args)
        params = node.params
        keys = [k for k in TILE_PARAMS if k in params]
        if keys:
            params = params.replace(**{k: tile for k in keys})
        if args == node.args and params is node.params:
            memo[id(node)] = node
        else:
            memo[id(node)] = Node(node.op, args, Params(params), node.shape, node.dtype)
    return Program(program.inputs, tuple(memo[id(o)] for o in program.outputs), program.consts)


def _flat(fn: Callable[..., tuple[Any, ...]]) -> Callable[..., Any]:
    return lambda *xs: fn(*xs)


def _has_tiles(program: Program) -> bool:
    return any(k in node.params for node in program.nodes() for k in TILE_PARAMS)


def _tile_group(program_id: str, program: Program) -> str:
    """The tile group of a program with tiled fused ops: the program with every tile set to
    one value names the group, so variants differing only in tile sizes share it."""
    key = _retile(program, 1).canonical_key()
    return f"{program_id}/{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def program_variants(
    spec: Spec, program_id: str, limit: int = 40, egraph: bool = True, egraph_limit: int = 12
) -> list[Variant]:
    """Every distinct variant of a spec: the hand-written ones, the e-graph's
    (`superopt.variants`, at most `egraph_limit`, if `egraph`), and the tile variants: the
    fused builders at each of `spec.tiles`, and every e-graph variant with a tiled fused op
    re-tiled to each of `spec.tiles`. Variants that differ only in tile sizes share a
    `tile_group`."""
    out: list[Variant] = []
    seen: set[str] = set()

    def add(vid: str, program: Program) -> None:
        key = program.canonical_key()
        if key not in seen and len(out) < limit:
            seen.add(key)
            group = _tile_group(program_id, program) if _has_tiles(program) else ""
            out.append(Variant(vid, program, _flat(to_callable(program)), group))

    for name, fn in spec.fns.items():
        add(name, trace(fn, *spec.args).program)
    reference = out[0].program
    for name, build in spec.fused.items():
        for tile in spec.tiles:
            add(f"{name}_t{tile}", Program(reference.inputs, build(reference.inputs, tile), {}))
    if egraph:
        try:
            from ._variants import variants

            ref_fn = next(iter(spec.fns.values()))
            found = [v.program for v in variants(ref_fn, *spec.args, limit=egraph_limit)]
        except Exception:
            found = []  # the e-graph's variants are a bonus; the hand-written ones always exist
        for i, program in enumerate(found):
            if _has_tiles(program) and spec.tiles:
                for tile in spec.tiles:
                    add(f"egraph{i}_t{tile}", _retile(program, tile))
            else:
                add(f"egraph{i}", program)
    return out


# ------------------------------------------------------------------ timing


def executable_key(exe: Any) -> str:
    """A fingerprint of a compiled executable's optimized HLO, blind to what does not change
    the machine code: instruction and computation names, source metadata, the module name.
    Two variants with the same key run the same executable, so their runtimes are equal
    and any measured difference between them is noise."""
    names: dict[str, str] = {}
    lines = []
    for line in exe.as_text().splitlines():
        s = line.strip()
        if not s.startswith(("%", "ROOT", "ENTRY", "}")):
            continue  # the module header, stack frames and file tables
        s = re.sub(r", metadata=\{[^}]*\}", "", s)
        if s.endswith("{"):  # a computation's header: its parameters' names, not types
            s = re.sub(r"[\w.\-]+: ", "", s)
        s = re.sub(r"%[\w.\-]+", lambda m: names.setdefault(m.group(0), f"%{len(names)}"), s)
        lines.append(s)
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GroupTiming:
    """What `_time_group` measured: per variant its timing, XLA's cost analysis and its
    executable key (variants sharing a key were timed once and share that timing)."""

    timings: list[Timing]
    costs: list[np.ndarray]
    keys: list[str]


def _time_group(
    variants: Sequence[Variant],
    args: tuple[Any, ...],
    budget_s: float,
    min_rounds: int = 5,
    max_rounds: int = 200,
    target_error: float = 0.01,
) -> GroupTiming:
    """Time variants interleaved, like `time_callables`, with three savings that matter for
    a corpus of thousands of variants: each variant is compiled once (the same executable
    gives XLA's cost analysis), variants that compile to the same executable
    (`executable_key`) are timed once, and rounds stop early once every median is known to
    `target_error` (its estimated relative standard error, `0.93 * spread / sqrt(n)`), never
    before `min_rounds`, never after `max_rounds` or `budget_s` of timed calls
    (`superopt._measure.timed_rounds`)."""
    args = jax.device_put(args)
    compiled, costs, keys = [], [], []
    first: dict[str, int] = {}
    for v in variants:
        exe = jax.jit(v.fn).lower(*args).compile()
        costs.append(_cost_of(exe))
        keys.append(executable_key(exe))
        if keys[-1] not in first:
            first[keys[-1]] = len(compiled)
            compiled.append(exe)
            jax.block_until_ready(exe(*args))  # the warm-up call
    faults: list[list[int]] = [[] for _ in compiled]
    samples = timed_rounds(
        compiled,
        args,
        min_rounds=min_rounds,
        max_rounds=max_rounds,
        budget_s=budget_s,
        target_error=target_error,
        faults=faults,
    )
    timed = [Timing.from_samples(s, f) for s, f in zip(samples, faults)]
    return GroupTiming([timed[first[k]] for k in keys], costs, keys)


def _cost_of(exe: Any) -> np.ndarray:
    try:
        analysis = exe.cost_analysis()
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0] if analysis else {}
        keys = ("flops", "transcendentals", "bytes accessed")
        return np.asarray([analysis.get(k, np.nan) for k in keys], np.float32)
    except Exception:
        return np.full(3, np.nan, np.float32)


# ------------------------------------------------------------------ store and collection


def _connect(db_path: str | Path) -> sqlite3.Connection:
    path = Path(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=60)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(_SCHEMA)
    columns = {row[1] for row in con.execute("PRAGMA table_info(variants)")}
    if "executable" not in columns:  # a store written before executables were keyed
        with con:
            con.execute("ALTER TABLE variants ADD COLUMN executable TEXT DEFAULT ''")
    for table in ("variants", "repeats"):  # stores written before page faults were counted
        if "faults" not in {row[1] for row in con.execute(f"PRAGMA table_info({table})")}:
            with con:
                con.execute(f"ALTER TABLE {table} ADD COLUMN faults REAL")
    return con


def _blob(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _versions() -> str:
    """The library versions, and how the allocator ran (`superopt._measure.malloc_mode`)."""
    import equinox

    return json.dumps(
        {"jax": jax.__version__, "equinox": equinox.__version__, "malloc": malloc_mode()}
    )


@dataclass(frozen=True)
class CollectStats:
    """What a `collect` call did, and how long the rest of the plan would take."""

    programs_done: int
    programs_total: int
    variants_measured: int
    seconds: float
    seconds_per_program: float
    estimated_remaining_s: float
    errors: int

    def summary(self) -> str:
        """One line for people: what was measured, how fast, and what is left."""
        left = (
            f"; about {self.estimated_remaining_s / 60:.1f} min left"
            if self.programs_done < self.programs_total
            else ""
        )
        failed = f", {self.errors} failed" if self.errors else ""
        return (
            f"{self.programs_done} of {self.programs_total} programs done "
            f"({self.variants_measured} variants measured in {self.seconds:.0f} s, "
            f"{self.seconds_per_program:.1f} s a program{failed}){left}"
        )


def plan(
    programs_per_family: int, families: Sequence[str] | None = None, seed: int = 0
) -> list[tuple[str, str, int]]:
    """The `(program_id, family, seed)` of every program a collection covers, in order
    (interleaved over families, so a partial run covers every family).

    A program's seed depends on its id alone (the family's place in `FAMILIES`, not in
    `families`): one id is one program whichever families a run covers."""
    names = list(FAMILIES) if families is None else list(families)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown corpus families {unknown}; known: {sorted(FAMILIES)}")
    position = {name: k for k, name in enumerate(FAMILIES)}
    return [
        (f"{name}-{seed}-{i}", name, seed * 1_000_003 + i * 7919 + position[name])
        for i in range(programs_per_family)
        for name in names
    ]


def collect(
    db_path: str | Path,
    *,
    programs_per_family: int = 32,
    families: Sequence[str] | None = None,
    seed: int = 0,
    budget_s: float = 1.0,
    time_limit_s: float | None = None,
    progress: bool = True,
) -> CollectStats:
    """Generate, measure and store programs and their variants (resumable).

    **Arguments:**

    - `db_path`: the SQLite store; programs already stored there are skipped.
    - `programs_per_family`: programs generated per family.
    - `families`: family names (default all of `FAMILIES`).
    - `seed`: the generator seed (part of each program id).
    - `budget_s`: timed seconds per program (all its variants, interleaved).
    - `time_limit_s`: stop after about this many seconds (run again to resume).
    - `progress`: show a rich progress bar with the time left.

    **Returns:** `CollectStats`, including an estimate of the time the rest would take.
    """
    con = _connect(db_path)
    todo = plan(programs_per_family, families, seed)
    stored = {r[0] for r in con.execute("SELECT program_id FROM programs")}
    pending = [p for p in todo if p[0] not in stored]

    def store(program: tuple[str, str, int], rows: list, seconds: float, error: str | None):
        program_id, family, prog_seed = program
        con.executemany(_INSERT_VARIANT, rows)
        con.execute(
            "INSERT OR REPLACE INTO programs VALUES (?,?,?,?,?,?)",
            (program_id, family, prog_seed, len(rows), seconds, error),
        )

    try:
        stats = _measure_all(con, pending, store, budget_s, time_limit_s, progress, "collecting")
    finally:
        con.close()
    # Done counts this plan's programs only, not others the store holds.
    done_before = len(todo) - len(pending)
    return dataclasses.replace(
        stats, programs_done=done_before + stats.programs_done, programs_total=len(todo)
    )


def remeasure(
    db_path: str | Path,
    *,
    families: Sequence[str] | None = None,
    budget_s: float = 1.0,
    time_limit_s: float | None = None,
    progress: bool = True,
) -> CollectStats:
    """Measure stored programs a second time, in this process, into the store's `repeats`
    table (resumable: programs measured again already are skipped). A variant that no longer
    rebuilds to its stored graph gets no second measurement.

    Within one run, variants are interleaved and their medians are known to about a
    percent; a second run, with fresh compilations and buffers, moves them by more. `export`
    gives the second medians as `Dataset.repeat_s`, and `costmodel.evaluate` scores the
    second run as a predictor of the first: the most any model can be shown to reach on
    these measurements.

    **Arguments:**

    - `db_path`: a store `collect` wrote.
    - `families`: only programs of these families (default all).
    - `budget_s`, `time_limit_s`, `progress`: as for `collect`.

    **Returns:** `CollectStats` over the programs to measure again.
    """
    con = _connect(db_path)
    stored = con.execute(
        "SELECT program_id, family, seed FROM programs WHERE error IS NULL AND program_id NOT IN "
        "(SELECT program_id FROM repeats) ORDER BY rowid"
    ).fetchall()
    todo = [p for p in stored if families is None or p[1] in families]

    def store(program: tuple[str, str, int], rows: list, seconds: float, error: str | None):
        # Only variants that rebuild to the stored graph (same opcodes and edges) count.
        stored_graphs = {
            vid: (op, edges)
            for vid, op, edges in con.execute(
                "SELECT variant_id, node_opcode, edge_index FROM variants WHERE program_id = ?",
                (program[0],),
            )
        }
        con.executemany(
            f"INSERT OR REPLACE INTO repeats ({', '.join(_REPEAT_COLUMNS)}) "
            f"VALUES ({','.join('?' * len(_REPEAT_COLUMNS))})",
            [
                tuple(r[_ROW[c]] for c in _REPEAT_COLUMNS)
                for r in rows
                if stored_graphs.get(r[_ROW["variant_id"]])
                == (r[_ROW["node_opcode"]], r[_ROW["edge_index"]])
            ],
        )

    try:
        return _measure_all(con, todo, store, budget_s, time_limit_s, progress, "measuring again")
    finally:
        con.close()


def _measure_all(
    con: sqlite3.Connection,
    pending: Sequence[tuple[str, str, int]],
    store: Callable[[tuple[str, str, int], list, float, str | None], None],
    budget_s: float,
    time_limit_s: float | None,
    progress: bool,
    label: str,
) -> CollectStats:
    """Measure each `(program_id, family, seed)` of `pending` and `store` its rows (in one
    transaction per program), with a progress bar and a time limit."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from costmodel.checkpoint import device_info

    info, versions = device_info(), _versions()
    start = time.perf_counter()
    measured = errors = finished = 0
    columns = ["{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    # No refresh thread: the cyclic garbage collector may run on whichever thread allocates,
    # and an e-graph (egglog's EGraph may only be dropped on the thread that made it) freed
    # on rich's refresh thread raises there. The bar refreshes after each program instead.
    with Progress(*columns, disable=not progress, auto_refresh=False) as bar:
        task = bar.add_task(label, total=len(pending))
        for program in pending:
            if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
                break
            t0 = time.perf_counter()
            try:
                rows = _measure_program(*program, budget_s, info, versions)
                error = None
            except Exception as err:  # a family that fails on a draw is recorded, not fatal
                rows, error = [], f"{type(err).__name__}: {err}"
                errors += 1
            with con:
                store(program, rows, time.perf_counter() - t0, error)
            measured += len(rows)
            finished += 1
            bar.update(task, advance=1, description=f"{label} {program[1]}", refresh=True)
    seconds = time.perf_counter() - start
    per = seconds / max(finished, 1)
    return CollectStats(
        finished,
        len(pending),
        measured,
        seconds,
        per,
        per * (len(pending) - finished),
        errors,
    )


def _measure_program(
    program_id: str,
    family: str,
    seed: int,
    budget_s: float,
    info: dict[str, str],
    versions: str,
) -> list[tuple[Any, ...]]:
    spec = FAMILIES[family](np.random.default_rng(seed))
    variants = program_variants(spec, program_id)
    args = tuple(jnp.asarray(a) for a in spec.args)
    measured = _time_group(variants, args, budget_s)
    rows = []
    for v, t, cost, key in zip(variants, measured.timings, measured.costs, measured.keys):
        g: GraphArrays = featurize_program(v.program, cost)
        rows.append((
            program_id, v.variant_id, family, v.tile_group,
            _blob(g.node_opcode.astype(np.int32)), _blob(g.node_feat.astype(np.float32)),
            _blob(g.edge_index.astype(np.int32)), _blob(g.config_feat.astype(np.float32)),
            _blob(g.xla_cost.astype(np.float32)),
            t.median_s, t.p25_s, t.p75_s, t.spread, t.n,
            info["backend"], info["device_kind"], versions, key, t.faults_per_call,
        ))  # fmt: skip
    return rows


def export(
    db_path: str | Path, out: str | Path | None = None, *, refeaturize: bool = False
) -> Dataset:
    """The stored variants as a `costmodel.dataset.Dataset` (written to `out` if given).

    **Arguments:**

    - `db_path`: the SQLite store `collect` wrote.
    - `out`: where to write the `.npz` (nothing is written if `None`).
    - `refeaturize`: recompute every variant's features with the current
      `costmodel.features` instead of using the stored ones, keeping the measured times
      (after a change to the features, without measuring again). Each program's variants
      are rebuilt from its family and seed; a variant whose rebuilt graph differs from the
      stored one (its opcodes or edges), or that is no longer built, is left out, and
      `meta["refeaturize_dropped"]` counts those. The store itself is not modified.

    The dataset's metadata records this machine's calibration (`costmodel.calibrate`):
    export where the store was measured, since roofline fits on the dataset use it.
    """
    from costmodel.analytical import calibrate
    from costmodel.features import NUM_CONFIG, NUM_FEATURES

    con = _connect(db_path)
    rows = con.execute(
        "SELECT program_id, variant_id, family, tile_group, node_opcode, node_feat, "
        "edge_index, config_feat, xla_cost, median_s, spread, n, executable, backend, "
        "device_kind, versions FROM variants ORDER BY program_id, variant_id"
    ).fetchall()
    seeds = dict(con.execute("SELECT program_id, seed FROM programs"))
    repeats = {
        (pid, vid): median
        for pid, vid, median in con.execute("SELECT program_id, variant_id, median_s FROM repeats")
    }
    con.close()
    records = []
    meta: dict[str, Any] = {}
    rebuilt: dict[str, dict[str, Variant]] = {}
    dropped = 0
    for row in rows:
        pid, vid, fam, tg, op, nf, ei, cf, xc, med, spread, n, key, backend, kind, versions = row
        if refeaturize:
            graph = _refeaturized(rebuilt, pid, fam, seeds, vid, op, ei, xc)
        else:
            graph = GraphArrays(
                np.frombuffer(op, np.int32),
                np.frombuffer(nf, np.float32).reshape(-1, NUM_FEATURES),
                np.frombuffer(ei, np.int32).reshape(-1, 2),
                np.frombuffer(cf, np.float32).reshape(NUM_CONFIG),
                np.frombuffer(xc, np.float32).reshape(3),
            )
        if graph is None:
            dropped += 1
            continue
        # A store written before executable keys: every variant its own.
        repeat = repeats.get((pid, vid), np.nan)
        records.append(
            Record(fam, pid, vid, graph, float(med), float(spread), tg, key or "", int(n or 0),
                   repeat)
        )  # fmt: skip
        meta = {"backend": backend, "device_kind": kind, "versions": json.loads(versions)}
    if refeaturize:
        meta["refeaturize_dropped"] = dropped
    # The peak rates of this machine (the one that measured the store, as a rule): the
    # roofline fitted on the dataset divides by them (`dataset_calibration`).
    meta["calibration"] = asdict(calibrate())
    dataset = Dataset.from_records(records, meta)
    if out is not None:
        dataset.save(out)
    return dataset


def _refeaturized(
    rebuilt: dict[str, dict[str, Variant]],
    program_id: str,
    family: str,
    seeds: dict[str, int],
    variant_id: str,
    opcode_blob: bytes,
    edge_blob: bytes,
    xla_blob: bytes,
) -> GraphArrays | None:
    """A stored variant's graph with freshly computed features, or `None` if its program
    no longer rebuilds to the stored graph."""
    if program_id not in rebuilt:
        variants: dict[str, Variant] = {}
        if family in FAMILIES and program_id in seeds:
            spec = FAMILIES[family](np.random.default_rng(seeds[program_id]))
            variants = {v.variant_id: v for v in program_variants(spec, program_id)}
        rebuilt.clear()  # programs come in order: keep one at a time
        rebuilt[program_id] = variants
    variant = rebuilt[program_id].get(variant_id)
    if variant is None:
        return None
    graph = featurize_program(variant.program, np.frombuffer(xla_blob, np.float32))
    same = np.array_equal(graph.node_opcode, np.frombuffer(opcode_blob, np.int32)) and (
        np.array_equal(graph.edge_index, np.frombuffer(edge_blob, np.int32).reshape(-1, 2))
    )
    return graph if same else None
