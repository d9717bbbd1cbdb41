"""Each algebra rule: it fires on a program that admits it, and keeps the values (f32, bf16)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import superopt
from superopt._codegen import evaluate
from superopt._search import search

# A few examples per rule and dtype keep the file fast; both dtypes are always covered.
PROFILE = settings(max_examples=2, deadline=None)
dims = st.integers(1, 12)


def _dot(contracting):
    return lambda a, b: lax.dot_general(a, b, (contracting, ((), ())))


# A case named `rule:form` runs `rule` alone on one form of what it matches.
CASES = {
    "dot_assoc": (lambda a, b, c: (a @ b) @ c, lambda m, k, n, p: [(m, k), (k, n), (n, p)]),
    "dot_assoc_vec": (lambda x, a, b: x @ (a @ b), lambda m, k, n, p: [(m,), (m, k), (k, n)]),
    "dot_assoc_batched": (
        lambda a, b, c: jnp.einsum("bij,bjk->bik", jnp.einsum("bij,bjk->bik", a, b), c),
        lambda m, k, n, p: [(2, m, k), (2, k, n), (2, n, p)],
    ),
    "dot_factor_left": (lambda a, b, c: a @ b + a @ c, lambda m, k, n, p: [(m, k), (k, n), (k, n)]),
    "dot_factor_right": (
        lambda a, b, c: a @ c - b @ c,
        lambda m, k, n, p: [(m, k), (m, k), (k, n)],
    ),
    "sum_of_dot": (lambda a, b: jnp.sum(a @ b), lambda m, k, n, p: [(m, k), (k, n)]),
    "sum_rows_of_dot": (lambda a, b: jnp.sum(a @ b, axis=0), lambda m, k, n, p: [(m, k), (k, n)]),
    "sum_cols_of_dot": (lambda a, b: jnp.sum(a @ b, axis=1), lambda m, k, n, p: [(m, k), (k, n)]),
    "scalar_out_of_dot": (lambda a, b: (a * 3.0) @ b, lambda m, k, n, p: [(m, k), (k, n)]),
    "transpose_of_dot": (lambda a, b: (a @ b).T, lambda m, k, n, p: [(m, k), (k, n)]),
    "transpose_transpose": (lambda a, b: a.T.T @ b, lambda m, k, n, p: [(m, k), (k, n)]),
    "mul_one": (lambda a, b: (a * 1.0) @ b, lambda m, k, n, p: [(m, k), (k, n)]),
    "add_zero": (lambda a, b: (a + 0.0) @ b, lambda m, k, n, p: [(m, k), (k, n)]),
    "dot_expand": (lambda a, b, c: a @ (b + c), lambda m, k, n, p: [(m, k), (k, n), (k, n)]),
    "scalar_into_dot": (lambda a, b: (a @ b) * 3.0, lambda m, k, n, p: [(m, k), (k, n)]),
    "unbroadcast_scalar": (
        lambda a, s, b: (a * jnp.broadcast_to(s, a.shape)) @ b,
        lambda m, k, n, p: [(m, k), (), (k, n)],
    ),
    "dot_transposed:tn": (_dot(((0,), (0,))), lambda m, k, n, p: [(k, m), (k, n)]),
    "dot_transposed:tn_vec": (_dot(((0,), (0,))), lambda m, k, n, p: [(k, m), (k,)]),
    "dot_transposed:nt": (_dot(((1,), (1,))), lambda m, k, n, p: [(m, k), (n, k)]),
    "dot_transposed:tt": (_dot(((0,), (1,))), lambda m, k, n, p: [(k, m), (n, k)]),
    "dot_transposed:vecmat": (lambda x, b: x @ b, lambda m, k, n, p: [(k,), (k, n)]),
    "dot_transposed:tt_vec": (_dot(((0,), (1,))), lambda m, k, n, p: [(k,), (n, k)]),
}


def _rule(name):
    return name.partition(":")[0]


def _variants_of(name, fn, args, top_k=16):
    tr = superopt.trace(fn, *args)
    res = search(tr.program, rules=[_rule(name)], top_k=top_k)
    return tr, res


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", sorted(CASES))
@PROFILE
@given(m=dims, k=dims, n=dims, p=dims, seed=st.integers(0, 2**16))
def test_rule_preserves_values(name, dtype, m, k, n, p, seed):
    _check_values(name, dtype, m, k, n, p, seed)


@pytest.mark.parametrize("name", sorted(n for n in CASES if n.startswith("dot_transposed")))
@PROFILE
@given(n=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_dot_transposed_keeps_the_values_of_square_operands(name, n, seed):
    # A transpose on the wrong side type-checks only on square operands: there, values tell.
    _check_values(name, jnp.float32, n, n, n, n, seed)


def _check_values(name, dtype, m, k, n, p, seed):
    fn, shapes = CASES[name]
    rng = np.random.default_rng(seed)
    args = [jnp.asarray(rng.normal(size=s), dtype) for s in shapes(m, k, n, p)]
    tr, res = _variants_of(name, fn, args, top_k=4)
    ref = evaluate(tr.program, *args)
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4
    for cand in res.candidates:
        out = evaluate(cand.program, *args)
        for r, o in zip(ref, out):
            scale = 1.0 + float(jnp.max(jnp.abs(r.astype(jnp.float32))))
            err = float(jnp.max(jnp.abs(r.astype(jnp.float32) - o.astype(jnp.float32))))
            assert err <= tol * scale * k * n, (name, err)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_fires(name):
    fn, shapes = CASES[name]
    args = [np.ones(s, np.float32) for s in shapes(8, 16, 4, 2)]
    _, res = _variants_of(name, fn, args)
    keys = {c.program.canonical_key() for c in res.candidates}
    assert len(keys) >= 2, f"{name} produced no variant: {res.note}"
    assert any(_rule(name) in step.rule for c in res.candidates for step in c.rewrites), res.note


# Operands that lax broadcasts by a size-1 dimension (jax >= 0.10 traces `b + c[None]` so).
# Into a contraction, distributing builds an ill-typed dot, which the search must drop
# (once, it failed the whole search); along a free dimension the rule holds and fires.
BROADCAST_CASES = {
    "into_contraction_right": (lambda a, b, c: a @ (b + c), lambda m, k, n: [(m, k), (k, n), (1, n)]),
    "free_right": (lambda a, b, c: a @ (b + c), lambda m, k, n: [(m, k), (k, n), (k, 1)]),
    "into_contraction_left": (lambda a, b, c: (a + b) @ c, lambda m, k, n: [(m, k), (m, 1), (k, n)]),
    "free_left": (lambda a, b, c: (a - b) @ c, lambda m, k, n: [(m, k), (1, k), (k, n)]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BROADCAST_CASES))
@PROFILE
@given(m=st.integers(2, 9), k=st.integers(2, 9), n=st.integers(2, 9), seed=st.integers(0, 2**16))
def test_distributing_over_a_size_one_broadcast_is_dropped_or_correct(case, m, k, n, seed):
    fn, shapes = BROADCAST_CASES[case]
    rng = np.random.default_rng(seed)
    args = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes(m, k, n)]
    tr, res = _variants_of("dot_expand", fn, args)
    ref = evaluate(tr.program, *args)[0]
    for cand in res.candidates:
        np.testing.assert_allclose(evaluate(cand.program, *args)[0], ref, rtol=1e-4, atol=1e-4)
    fired = any("dot_expand" in s.rule for c in res.candidates for s in c.rewrites)
    assert fired == case.startswith("free"), res.note


# A dot of bfloat16 by float32 (mixed precision) has operands of two dtypes. A float32
# scalar moved onto the bfloat16 side, or a bfloat16 one onto the float32 product, makes a
# multiply that lax rejects: no such candidate may come out. Moving a float32 scalar onto
# the float32 side is fine.
MIXED_CASES = {
    "scalar_into_dot": (lambda a, b: (a @ b) * 3.0, True),
    "scalar_out_of_dot": (lambda a, b: (a * 3) @ b, False),
}


@pytest.mark.parametrize("name", sorted(MIXED_CASES))
def test_scalar_rules_keep_operand_dtypes_on_a_mixed_dot(name):
    fn, fires = MIXED_CASES[name]
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(6, 5)), jnp.bfloat16)
    b = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    tr, res = _variants_of(name, fn, [a, b])
    ref = np.asarray(evaluate(tr.program, a, b)[0], np.float32)
    for cand in res.candidates:
        for node in cand.program.nodes():
            if node.op == "mul":
                assert len({x.dtype for x in node.args}) == 1, cand.program
        out = jax.jit(superopt.to_callable(cand.program))(a, b)[0]
        np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2e-2, atol=2e-2)
    moved = [c for c in res.candidates if any(name in s.rule for s in c.rewrites)]
    assert bool(moved) == fires, res.note
    # The one move that types: the float32 scalar onto the float32 operand.
    for c in moved:
        (mul,) = [n for n in c.program.nodes() if n.op == "mul"]
        assert {x.dtype for x in mul.args} == {np.dtype("float32")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_keeps_an_explicit_precision(name):
    # Every dot a rule builds from HIGHEST dots is a HIGHEST dot: none drops or changes it.
    fn, shapes = CASES[name]
    args = [np.ones(s, np.float32) for s in shapes(8, 16, 4, 2)]
    with jax.default_matmul_precision("highest"):  # every dot of the trace names HIGHEST
        tr = superopt.trace(fn, *args)
    res = search(tr.program, rules=[_rule(name)], top_k=16)
    assert len({c.program.canonical_key() for c in res.candidates}) >= 2, res.note
    for cand in res.candidates:
        dots = [n for n in cand.program.nodes() if n.op == "dot_general"]
        assert dots and all(d.params["precision"] == ("HIGHEST", "HIGHEST") for d in dots)


@pytest.mark.parametrize("name", ["dot_factor_left", "dot_assoc"])
def test_dots_of_different_precisions_are_not_combined(name):
    a = np.ones((8, 8), np.float32)

    def fn(a, b, c):
        left = jnp.matmul(a, b, precision="highest")
        return left + a @ c if name == "dot_factor_left" else left @ c

    res = search(superopt.trace(fn, a, a, a).program, rules=[name], top_k=16)
    assert len(res.candidates) == 1, [c.rewrites for c in res.candidates]


def _chain(a, b, v):
    # Traced as d = dot(b, a, (((0,),(1,)),((),()))) = (a @ b)^T, then v @ d (VECMAT).
    return jnp.einsum("ij,jk,k->i", a, b, v, optimize=False)


def test_a_transposed_einsum_chain_is_reassociated():
    # (A@B)@v hidden in other dimension numbers: with every rule, the 256 x 256 product
    # goes and two matrix-vector products remain.
    n = 256
    rng = np.random.default_rng(0)
    a, b, v = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(n, n), (n, n), (n,)])
    program = superopt.trace(_chain, a, b, v).program
    assert [d.shape for d in program.nodes() if d.op == "dot_general"] == [(n, n), (n,)]
    res = search(program)
    best = res.candidates[0]
    dots = [d for d in best.program.nodes() if d.op == "dot_general"]
    assert [d.shape for d in dots] == [(n,), (n,)], res.note
    assert any("dot_transposed" in s.rule for s in best.rewrites), best.rewrites
    expected = a @ (b @ v)
    np.testing.assert_allclose(evaluate(best.program, a, b, v)[0], expected, rtol=1e-3, atol=1e-3)

    opt = superopt.optimize(_chain, a, b, v, cost_model="flops", cache=False)
    assert opt.report.verified
    assert any("dot_transposed" in s.rule for s in opt.report.rewrites), opt.report
    np.testing.assert_allclose(opt(a, b, v), expected, rtol=1e-3, atol=1e-3)
