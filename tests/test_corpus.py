"""The corpus pipeline: families, variants, the resumable SQLite store and the export."""

from __future__ import annotations

import dataclasses
import sqlite3
import sys

import numpy as np
import pytest

from costmodel.analytical import calibrate
from costmodel.features import featurize_program
from superopt._corpus import (
    FAMILIES,
    _retile,
    _tile_group,
    _time_group,
    collect,
    executable_key,
    export,
    plan,
    program_variants,
    remeasure,
)


def test_plan_interleaves_families_and_rejects_unknown_ones():
    p = plan(2, ["mlp", "xent"])
    assert [fam for _, fam, _ in p] == ["mlp", "xent", "mlp", "xent"]
    assert len({pid for pid, _, _ in p}) == 4
    with pytest.raises(ValueError, match="unknown corpus families"):
        plan(1, ["nope"])


def test_a_program_id_is_one_program_whichever_families_a_run_covers():
    everything = {pid: seed for pid, _, seed in plan(3)}
    for families in (["xent_pow2"], ["reduction", "mlp"], ["xent_pow2", "xent"]):
        for pid, _, seed in plan(3, families):
            assert everything[pid] == seed
    assert len(set(everything.values())) == len(everything)


@pytest.mark.parametrize(
    "family",
    [
        "xent_bias",
        "matrix_chain",
        "normalization",
        "reduction",
        "recurrent",
        "mlp",
        "chain5",
        "shared_operand",
        "softmax",
        "decode_attention",
    ],
)
def test_variants_are_distinct_and_equivalent(family):
    spec = FAMILIES[family](np.random.default_rng(3))
    variants = program_variants(spec, "p", egraph=False)
    keys = [v.program.canonical_key() for v in variants]
    assert len(set(keys)) == len(keys) >= 2
    # Every variant of a group is equivalent: no deliberately different `near_*` ones.
    assert not any(v.variant_id.startswith("near_") for v in variants)
    ref = np.asarray(variants[0].fn(*spec.args)[0], np.float32)
    # bfloat16 draws differ between formulations (one-pass variance cancels badly there).
    tol = 5e-2 if spec.args[0].dtype == np.float32 else 0.5
    for v in variants[1:]:
        out = np.asarray(v.fn(*spec.args)[0], np.float32)
        np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_causal_attention_variants_are_equivalent():
    spec = FAMILIES["causal_attention"](np.random.default_rng(1))
    spec = type(spec)(spec.args, spec.fns, spec.fused, spec.tiles[:2])
    variants = program_variants(spec, "p", egraph=False)
    ref = np.asarray(variants[0].fn(*spec.args)[0])
    for v in variants[1:]:
        np.testing.assert_allclose(np.asarray(v.fn(*spec.args)[0]), ref, atol=2e-4, rtol=2e-3)


def test_tile_variants_form_a_group():
    spec = FAMILIES["xent"](np.random.default_rng(0))
    variants = program_variants(spec, "p", egraph=False)
    tiles = [v for v in variants if v.tile_group]
    assert len(tiles) == len(spec.tiles) >= 5
    assert len({v.tile_group for v in tiles}) == 1
    assert tiles[0].tile_group.startswith("p/")
    assert not any(v.tile_group for v in variants if v not in tiles)
    retiled = _retile(tiles[0].program, 77)
    assert retiled.outputs[0].params["chunk"] == 77
    # Re-tiling keeps the group: only the tile sizes differ.
    assert _tile_group("p", retiled) == tiles[0].tile_group


def test_timer_stops_early_and_reports_costs():
    spec = FAMILIES["reduction"](np.random.default_rng(0))
    variants = program_variants(spec, "p", egraph=False)
    args = tuple(np.asarray(a) for a in spec.args)
    measured = _time_group(variants, args, budget_s=0.0, min_rounds=3, max_rounds=50)
    assert all(t.n == 3 for t in measured.timings)
    assert all(t.median_s > 0 for t in measured.timings)
    assert all(c.shape == (3,) and c[0] > 0 for c in measured.costs)  # XLA counts the FLOPs
    assert len(set(measured.keys)) == len(variants)  # these variants compile differently


def test_timer_stops_once_every_median_is_known_well_enough():
    spec = FAMILIES["reduction"](np.random.default_rng(0))
    variants = program_variants(spec, "p", egraph=False)[:2]
    args = tuple(np.asarray(a) for a in spec.args)
    # Any median is known to 1000%: stop at the first chance, long before the budget.
    loose = _time_group(variants, args, budget_s=60.0, min_rounds=4, target_error=10.0)
    assert [t.n for t in loose.timings] == [4, 4]
    # No median is known exactly: only the round limit stops it.
    exact = _time_group(variants, args, budget_s=60.0, max_rounds=9, target_error=0.0)
    assert [t.n for t in exact.timings] == [9, 9]


def test_executable_key_ignores_names_and_source_but_not_the_program():
    import jax
    import jax.numpy as jnp

    x = np.ones((64, 32), np.float32)

    def key(fn):
        return executable_key(jax.jit(fn).lower(x).compile())

    def first(v):
        return jnp.sum(v * 2.0 + 1.0)

    def second(w):  # the same program, written elsewhere under other names
        doubled = w * 2.0
        return jnp.sum(doubled + 1.0)

    assert key(first) == key(second)
    assert key(first) != key(lambda v: jnp.sum(v * 3.0 + 1.0))
    assert key(first) != key(lambda v: jnp.max(v * 2.0 + 1.0))


def test_a_store_written_before_executable_keys_is_upgraded_in_place(tmp_path):
    from superopt._corpus import _connect

    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE variants (program_id TEXT, variant_id TEXT, family TEXT, "
                "tile_group TEXT, node_opcode BLOB, node_feat BLOB, edge_index BLOB, "
                "config_feat BLOB, xla_cost BLOB, median_s REAL, p25_s REAL, p75_s REAL, "
                "spread REAL, n INTEGER, backend TEXT, device_kind TEXT, versions TEXT, "
                "PRIMARY KEY (program_id, variant_id))")  # fmt: skip
    con.execute("INSERT INTO variants (program_id, variant_id, median_s) VALUES ('p', 'v', 1.0)")
    con.execute(
        "CREATE TABLE repeats (program_id TEXT, variant_id TEXT, median_s REAL, "
        "spread REAL, n INTEGER, executable TEXT, PRIMARY KEY (program_id, variant_id))"
    )
    con.commit()
    con.close()
    con = _connect(db)
    assert con.execute("SELECT median_s, executable, faults FROM variants").fetchall() == [
        (1.0, "", None)
    ]
    assert con.execute("SELECT faults FROM repeats").fetchall() == []
    con.close()


def test_variants_with_one_executable_are_timed_once_and_share_the_timing():
    from superopt._corpus import Variant

    spec = FAMILIES["reduction"](np.random.default_rng(0))
    variants = program_variants(spec, "p", egraph=False)[:2]
    # The first variant again under another id: it compiles to the same executable.
    twin = Variant("twin", variants[0].program, variants[0].fn)
    measured = _time_group([*variants, twin], tuple(np.asarray(a) for a in spec.args),
                           budget_s=0.0, min_rounds=3)  # fmt: skip
    assert measured.keys[2] == measured.keys[0] != measured.keys[1]
    assert measured.timings[2] is measured.timings[0]
    assert measured.timings[1] is not measured.timings[0]


def test_collect_stores_resumes_and_exports(tmp_path):
    db = tmp_path / "store.sqlite"
    stats = collect(db, programs_per_family=1, families=["reduction", "elementwise"],
                    budget_s=0.01, progress=False)  # fmt: skip
    assert stats.programs_done == 2 and stats.errors == 0 and stats.variants_measured >= 4
    again = collect(db, programs_per_family=2, families=["reduction", "elementwise"],
                    budget_s=0.01, progress=False, time_limit_s=0.0)  # fmt: skip
    assert again.programs_done == 2 and again.programs_total == 4
    assert again.estimated_remaining_s > 0
    assert again.summary().startswith("2 of 4 programs done (0 variants measured in ")
    assert "min left" in again.summary() and "min left" not in stats.summary()
    # Another family into the same store: the counts are of that run's plan alone.
    other = collect(db, programs_per_family=1, families=["reduction"], budget_s=0.01,
                    progress=False)  # fmt: skip
    assert other.programs_done == other.programs_total == 1 and other.variants_measured == 0
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    n_rows = con.execute("SELECT COUNT(*) FROM variants").fetchone()[0]
    keys = con.execute("SELECT program_id, executable FROM variants").fetchall()
    faults = [f for (f,) in con.execute("SELECT faults FROM variants")]
    con.close()
    assert all(len(key) == 16 for _, key in keys)
    # Each variant's median page faults per call (where the platform counts them).
    assert (
        all(f is None for f in faults)
        if sys.platform == "win32"
        else all(f is not None and f >= 0 for f in faults)
    )
    dataset = export(db, tmp_path / "ds.npz")
    assert len(dataset) == n_rows and dataset.meta["backend"] == "cpu"
    # The machine's peak rates, which roofline fits on the dataset divide by.
    assert dataset.meta["calibration"] == dataclasses.asdict(calibrate())
    assert dataset.summary()["executables"] == len(set(keys))
    assert sorted(zip(dataset.program_id, dataset.executable)) == sorted(keys)
    assert (dataset.rounds >= 1).all()
    assert (dataset.runtime_s > 0).all()
    assert sorted(dataset.families()) == ["elementwise", "reduction"]
    from costmodel.dataset import Dataset

    loaded = Dataset.load(tmp_path / "ds.npz")
    assert loaded.content_hash() == dataset.content_hash()
    assert (loaded.executable == dataset.executable).all()
    assert (loaded.rounds == dataset.rounds).all()
    g = loaded.graph(0)
    assert g.node_feat.shape[0] == g.node_opcode.shape[0] > 0


def test_remeasure_times_stored_programs_again_once_and_export_carries_it(tmp_path):
    from costmodel.evaluate import SECOND_RUN, evaluate

    db = tmp_path / "store.sqlite"
    collect(db, programs_per_family=1, families=["reduction", "elementwise"], budget_s=0.01,
            progress=False)  # fmt: skip
    assert np.isnan(export(db).repeat_s).all()
    stats = remeasure(db, families=["reduction"], budget_s=0.01, progress=False)
    assert stats.programs_done == stats.programs_total == 1 and stats.errors == 0
    with sqlite3.connect(db) as con:
        counted = con.execute("SELECT COUNT(*) FROM repeats WHERE faults IS NOT NULL").fetchone()
    assert counted[0] > 0 or sys.platform == "win32"
    assert remeasure(db, families=["reduction"], progress=False).programs_total == 0
    dataset = export(db)
    again = dataset.family == "reduction"
    assert np.isfinite(dataset.repeat_s[again]).all() and np.isnan(dataset.repeat_s[~again]).all()
    # Same programs, same machine: the second medians are of the first's order of magnitude.
    ratio = dataset.repeat_s[again] / dataset.runtime_s[again]
    assert ((ratio > 0.2) & (ratio < 5.0)).all()
    result = evaluate(dataset, {}, np.flatnonzero(again), ("reduction",))
    assert SECOND_RUN in result.metrics
    assert SECOND_RUN not in evaluate(dataset, {}, np.arange(len(dataset))).metrics


def test_a_dataset_saved_before_executables_and_rounds_loads_without_them(tmp_path):
    from costmodel.dataset import _FIELDS, Dataset, Record

    g = featurize_program(program_variants(FAMILIES["reduction"](np.random.default_rng(0)), "p",
                                           egraph=False)[0].program)  # fmt: skip
    ds = Dataset.from_records([Record("f", "p", v, g, 1.0, 0.1, "", "x", 9) for v in "ab"])
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez_compressed(f, meta=np.asarray("{}"), **{k: getattr(ds, k) for k in _FIELDS})
    old = Dataset.load(tmp_path / "old.npz")
    assert old.content_hash() == ds.content_hash()
    assert list(old.executable) == ["a", "b"] and list(old.rounds) == [0, 0]
    assert np.isnan(old.repeat_s).all()
    assert old.summary()["executables"] == 2 and ds.summary()["executables"] == 1


def test_refeaturized_export_keeps_times_and_drops_what_no_longer_rebuilds(tmp_path):
    db = tmp_path / "store.sqlite"
    collect(db, programs_per_family=1, families=["reduction"], budget_s=0.01, progress=False)
    stored = export(db)
    again = export(db, refeaturize=True)
    assert again.meta["refeaturize_dropped"] == 0 and len(again) == len(stored)
    # The features are recomputed with today's code (here: the same) and the times kept.
    assert np.array_equal(again.node_feat, stored.node_feat)
    assert np.array_equal(again.runtime_s, stored.runtime_s)
    # A stored graph its program no longer rebuilds to is left out, and counted.
    con = sqlite3.connect(db)
    con.execute("UPDATE variants SET edge_index = ? WHERE variant_id = 'ref'",
                (np.zeros((1, 2), np.int32).tobytes(),))  # fmt: skip
    con.commit()
    con.close()
    changed = export(db, refeaturize=True)
    assert changed.meta["refeaturize_dropped"] == 1 and len(changed) == len(stored) - 1
    assert "ref" not in changed.variant_id.tolist()
