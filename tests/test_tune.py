"""The autotuner's pieces: stable keys, stored programs, diversity, timings reused."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superopt
from superopt import _tune
from superopt._codegen import to_callable
from superopt._search import Candidate, RewriteStep
from superopt.ir import Program, make


def _normal(seed, *shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape).astype(dtype)


def _scan(x, w):
    last, ys = jax.lax.scan(lambda c, r: (c * 0.5 + r, jnp.sin(c)), jnp.zeros(3), x)
    return (last @ w).sum() + ys.sum()


PROGRAMS = [
    ("matmul", lambda a, b: jnp.tanh(a @ b) * 2.0, (_normal(0, 4, 3), _normal(1, 3, 5))),
    ("scan", _scan, (_normal(2, 6, 3), _normal(3, 3, 2))),
    ("gather", lambda x, i: x[i] + jnp.inf, (_normal(4, 7, 3), jnp.asarray([0, 6, 2]))),
    ("bf16", lambda x: (x.astype(jnp.bfloat16) * 3).astype(jnp.float32), (_normal(5, 8),)),
    ("const", lambda x: x + np.arange(4.0, dtype=np.float32) ** 2, (_normal(6, 4),)),
    ("keys", lambda k: jax.random.normal(k, (3,)), (jax.random.key(0),)),
    ("highest", lambda a, b: jnp.matmul(a, b, precision="highest") @ b.T,
     (_normal(7, 4, 3), _normal(8, 3, 3))),
]  # fmt: skip


@pytest.mark.parametrize("name,fn,args", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_a_stored_program_rebuilds_against_a_new_trace(name, fn, args):
    first = superopt.trace(fn, *args).program
    second = superopt.trace(fn, *args).program
    assert _tune.stable_key(first) == _tune.stable_key(second)
    data = _tune.dump_program(first, first)
    rebuilt = _tune.load_program(json.loads(json.dumps(data)), second)
    assert rebuilt is not None
    assert rebuilt.canonical_key() == second.canonical_key()
    leaves = jax.tree_util.tree_leaves(args)
    for a, b in zip(to_callable(rebuilt)(*leaves), jax.tree_util.tree_leaves(fn(*args))):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=1e-5)  # fmt: skip


def test_a_dot_precision_is_stored_as_plain_data():
    fn = lambda a, b: jnp.matmul(a, b, precision="highest") @ b  # noqa: E731
    program = superopt.trace(fn, _normal(0, 3, 3), _normal(1, 3, 3)).program
    data = _tune.dump_program(program, program)
    stored = sorted(
        json.dumps(row[2]["precision"]) for row in data["nodes"] if row[0] == "dot_general"
    )
    assert stored == ["null", '{"$tuple": ["HIGHEST", "HIGHEST"]}']  # not a reference


def test_a_rewritten_program_is_stored_relative_to_its_reference():
    ref = superopt.trace(lambda x: x * 2.0, _normal(0, 5)).program
    (x,) = ref.inputs
    cand = Program(ref.inputs, (make("add", x, x),), ref.consts)
    data = _tune.dump_program(cand, ref)
    again = superopt.trace(lambda x: x * 2.0, _normal(1, 5)).program
    rebuilt = _tune.load_program(data, again)
    assert rebuilt is not None and rebuilt.count_ops() == {"input": 1, "add": 1}
    assert rebuilt.inputs[0] is again.inputs[0]


def test_data_that_does_not_fit_is_a_miss_not_a_wrong_program():
    c1, c2 = np.arange(5.0, dtype=np.float32), np.arange(1.0, 6.0, dtype=np.float32)
    ref = superopt.trace(lambda x: jnp.sin(x) + c1, _normal(0, 5)).program
    assert ref.consts
    data = _tune.dump_program(ref, ref)
    assert _tune.load_program(data, ref) is not None
    other = superopt.trace(lambda x: jnp.cos(x) + c2, _normal(0, 5)).program
    assert _tune.load_program(data, other) is None  # its constant is not in this trace
    tampered = {**data, "nodes": [list(row) for row in data["nodes"]]}
    sin_row = next(r for r in tampered["nodes"] if r[0] == "sin")
    sin_row[0] = "cos"
    assert _tune.load_program(tampered, ref) is None  # the stored key no longer matches
    for junk in (None, {}, {"format": 99}, {**data, "nodes": [["add", [7, 8], {}, [], None]]}):
        assert _tune.load_program(junk, ref) is None


def test_stable_keys_tell_programs_apart():
    a = superopt.trace(lambda x: jnp.sin(x), _normal(0, 5)).program
    b = superopt.trace(lambda x: jnp.cos(x), _normal(0, 5)).program
    c = superopt.trace(lambda x: jnp.sin(x), _normal(0, 6)).program
    assert len({_tune.stable_key(p) for p in (a, b, c)}) == 3


def _cand(label, *rules):
    ref = superopt.trace(lambda x: x + 1.0, jnp.ones(2)).program
    steps = tuple(RewriteStep(r, "x", "y") for r in rules)
    return Candidate(ref, steps, 1.0, label)


def test_measurement_order_puts_one_of_each_rewrite_choice_first():
    cands = [
        _cand("v0", "fused_xent[chunk=2048]"),
        _cand("v1", "fused_xent[chunk=2048]", "dot_assoc"),
        _cand("v2", "fused_xent[chunk=2048]"),
        _cand("v3", "fused_xent[chunk=4096]"),
        _cand("v4", "dot_assoc", "fused_xent[chunk=2048]"),
    ]
    order = [c.label for c in _tune.measurement_order(cands)]
    assert order == ["v0", "v1", "v3", "v2", "v4"]


def test_timings_are_stored_with_their_reference_and_reused(tmp_path, monkeypatch):
    fn = lambda x: x * 2.0  # noqa: E731
    x = _normal(0, 64)
    ref = superopt.trace(fn, x).program
    (inp,) = ref.inputs
    cand = Candidate(Program(ref.inputs, (make("add", inp, inp),), {}), label="x+x")
    key = _tune.stable_key(cand.program)
    call = jax.jit(lambda x: x + x)
    program_key = _tune.stable_key(ref)
    with superopt.TuningCache(tmp_path) as store:
        (first,) = _tune.measure(fn, [(cand, key, call)], (x,), (), program_key=program_key,
                                 store=store, budget_s=0.01)  # fmt: skip
        assert not first.reused and first.measured_s > 0 and first.reference_s > 0
        assert first.speedup == pytest.approx(first.reference_s / first.measured_s)
        labels = sorted(m.variant_label for m in store.measurements(program_key))
        assert labels == [f"candidate:{key}", f"jax.jit:{key}"]

        def no_timing(*args, **kwargs):
            raise AssertionError("a stored timing must not be taken again")

        monkeypatch.setattr(superopt._measure, "time_callables", no_timing)
        (again,) = _tune.measure(fn, [(cand, key, call)], (x,), (), program_key=program_key,
                                 store=store)  # fmt: skip
        assert again.reused and again.measured_s == first.measured_s
        assert again.reference_s == first.reference_s


def test_fastest_skips_candidates_slower_than_jax_jit():
    def m(label, measured):
        return _tune.Measured(label, label, (), None, measured, 1.0, 0.0, False)

    assert _tune.fastest([m("a", 2.0), m("b", 1.5)]) is None
    assert _tune.fastest([m("a", 0.9), m("b", 0.5), m("c", 1.1)]).label == "b"
    assert m("b", 0.5).to_dict()["speedup"] == 2.0
