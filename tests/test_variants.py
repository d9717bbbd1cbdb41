"""`superopt.variants` on the five issue cases: the rewritten form is there, structurally,
and every variant computes what the original does."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import superopt
from superopt.ir import Node, Program

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import batched_loop
import distributivity
import matrix_chain
import scalar_hoist
import sum_of_product


def _dots(program: Program) -> list[Node]:
    return [n for n in program.nodes() if n.op == "dot_general"]


def _chain_reassociated(program: Program) -> bool:
    # A @ (B @ x): both dots are matrix-vector (1-D results), no n×n product.
    dots = _dots(program)
    return len(dots) == 2 and all(d.ndim == 1 for d in dots)


def _sum_before_dot(program: Program) -> bool:
    # sum(A, 0) @ sum(B, 1): the one dot takes two reduced (1-D) operands.
    dots = _dots(program)
    return (
        len(dots) == 1
        and dots[0].ndim == 0
        and all(a.op == "reduce_sum" and a.ndim == 1 for a in dots[0].args)
    )


def _scale_off_the_big_operand(program: Program) -> bool:
    # s * (A @ B) or A @ (s * B): the scalar never multiplies the big operand A.
    big = program.inputs[1]
    return len(_dots(program)) == 1 and not any(
        n.op == "mul" and any(a is big for a in n.args) for n in program.nodes()
    )


def _factored(program: Program) -> bool:
    # A @ (B + C): one dot whose right operand is the sum.
    dots = _dots(program)
    return len(dots) == 1 and dots[0].args[1].op == "add"


def _batched(program: Program) -> bool:
    # One dot with a batch dimension instead of 64.
    dots = _dots(program)
    return len(dots) == 1 and dots[0].params["dimension_numbers"][1] == ((0,), (0,))


CASES = {
    "matrix_chain": (matrix_chain.chain, lambda: matrix_chain.make_args(256), _chain_reassociated),
    "sum_of_product": (sum_of_product.total, lambda: sum_of_product.make_args(64), _sum_before_dot),
    "scalar_hoist": (scalar_hoist.scaled, lambda: scalar_hoist.make_args(256, 64, 2), _scale_off_the_big_operand),
    "distributivity": (distributivity.shared, lambda: distributivity.make_args(64), _factored),
    "batched_loop": (batched_loop.loop, lambda: batched_loop.make_args(16, 8), _batched),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_variants_contain_the_rewrite_and_keep_values(name):
    fn, make_args, rewritten = CASES[name]
    args = make_args()
    variants = superopt.variants(fn, *args, limit=8)
    assert any(rewritten(v.program) for v in variants), [v.rules for v in variants]
    # The rewritten form is also the one predicted cheapest.
    assert rewritten(variants[0].program) and variants[0].rules
    # The original program is among the variants, untouched (opaque nodes such as
    # `stack` differ by identity between traces, so compare op counts).
    reference = superopt.trace(fn, *args).program.count_ops()
    assert any(v.program.count_ops() == reference and not v.rules for v in variants)
    expected = jax.tree_util.tree_leaves(fn(*args))
    for v in variants:
        got = jax.tree_util.tree_leaves(v.fn(*args))
        for e, g in zip(expected, got):
            np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-3, atol=2e-3)
        assert v.source.strip()


def test_variants_keep_the_original_within_the_limit_and_take_static_args():
    fn, make_args, rewritten = CASES["matrix_chain"]
    args = make_args()
    (only,) = superopt.variants(fn, *args, limit=1)  # the original, not the cheapest
    assert not only.rules and not rewritten(only.program)
    two = superopt.variants(fn, *args, limit=2)
    assert rewritten(two[0].program) and not two[1].rules

    def scaled(a, b, n):
        return (a @ b) * n

    a, b = _normal_pair()
    found = superopt.variants(scaled, a, b, 3, static_argnums=-1)
    for v in found:
        np.testing.assert_allclose(v.fn(a, b, 3), scaled(a, b, 3), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="limit"):
        superopt.variants(fn, *args, limit=0)


def _normal_pair():
    key = jax.random.key(0)
    return jax.random.normal(key, (8, 8)), jax.random.normal(jax.random.fold_in(key, 1), (8, 8))
