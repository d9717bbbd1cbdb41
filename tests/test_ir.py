"""The IR: type rules against JAX, `make` errors, canonical keys, costs."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as hst
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax import lax

import superopt
import superopt.testing as sot
from superopt.ir import (
    Cost,
    IRError,
    Node,
    Params,
    Program,
    ShapeError,
    get_op,
    infer_type,
    make,
    node_cost,
    registered_ops,
)

F32 = np.dtype(np.float32)
I32 = np.dtype(np.int32)
BOOL = np.dtype(np.bool_)

# Ops with no operands to type (leaves bound by codegen), multi-result plumbing, and the
# fused ops, whose type rules have their own tests next to their lowering.
_EXEMPT = {"input", "const", "opaque", "tuple_get"}


def _exempt(name: str) -> bool:
    return name in _EXEMPT or get_op(name).category == "fused"


_shapes = hst.lists(hst.integers(1, 4), min_size=0, max_size=3).map(tuple)
_nonscalar = hst.lists(hst.integers(1, 4), min_size=1, max_size=3).map(tuple)


def _inputs(*types: tuple[tuple[int, ...], np.dtype]) -> list[Node]:
    return [Node("input", (), Params(index=i), s, np.dtype(d)) for i, (s, d) in enumerate(types)]


def _unary(draw: Any, name: str):
    dtype = draw(hst.sampled_from([I32, BOOL])) if name == "not" else F32
    return _inputs((draw(_shapes), dtype)), {}


def _binary(draw: Any, name: str):
    dtype = draw(hst.sampled_from([I32, BOOL])) if name in ("and", "or", "xor") else F32
    shape = draw(_shapes)
    # lax lets a rank-0 operand stand in for any shape.
    other = draw(hst.sampled_from([shape, ()]))
    pair = [(shape, dtype), (other, dtype)]
    return _inputs(*(pair if draw(hst.booleans()) else pair[::-1])), {}


def _dot(draw: Any, name: str):
    lhs = draw(_nonscalar)
    axes = list(range(len(lhs)))
    perm = draw(hst.permutations(axes))
    n_c = draw(hst.integers(0, len(lhs)))
    contract, rest = perm[:n_c], perm[n_c:]
    batch = rest[: draw(hst.integers(0, len(rest)))]
    free = draw(hst.lists(hst.integers(1, 4), max_size=2))
    kinds = [("b", i) for i in range(len(batch))] + [("c", i) for i in range(len(contract))]
    order = draw(hst.permutations(kinds + [("f", i) for i in range(len(free))]))
    rhs = tuple(
        lhs[batch[i]] if k == "b" else lhs[contract[i]] if k == "c" else free[i] for k, i in order
    )
    rb = tuple(order.index(("b", i)) for i in range(len(batch)))
    rc = tuple(order.index(("c", i)) for i in range(len(contract)))
    dims = ((tuple(contract), rc), (tuple(batch), rb))
    pref = draw(hst.sampled_from([None, F32]))
    precision = draw(hst.sampled_from([None, ("HIGHEST", "HIGHEST"), ("DEFAULT", "HIGH")]))
    return _inputs((lhs, F32), (rhs, F32)), {
        "dimension_numbers": dims,
        "preferred_element_type": pref,
        "precision": precision,
    }


def _reduce(draw: Any, name: str):
    shape = draw(_nonscalar)
    axes = tuple(sorted(draw(hst.sets(hst.integers(0, len(shape) - 1)))))
    dtype = BOOL if name in ("reduce_and", "reduce_or") else F32
    if name in ("argmax", "argmin"):
        return _inputs((shape, F32)), {"axes": (draw(hst.integers(0, len(shape) - 1)),),
                                        "index_dtype": I32}  # fmt: skip
    return _inputs((shape, dtype)), {"axes": axes}


def _broadcast(draw: Any, name: str):
    shape = draw(_shapes)
    out = list(shape)
    for _ in range(draw(hst.integers(0, 2))):
        out.insert(draw(hst.integers(0, len(out))), -1)
    dims = tuple(i for i, d in enumerate(out) if d != -1)
    grown = [draw(hst.integers(1, 4)) if d in (-1, 1) else d for d in out]
    return _inputs((shape, F32)), {"shape": tuple(grown), "broadcast_dimensions": dims}


def _reshape(draw: Any, name: str):
    shape = draw(_shapes)
    size = int(np.prod(shape))
    options = [*sot._reshapes(size, 3), (1, size), (size, 1, 1)]
    return _inputs((shape, F32)), {"new_sizes": draw(hst.sampled_from(options))}


def _transpose(draw: Any, name: str):
    shape = draw(_shapes)
    return _inputs((shape, F32)), {"permutation": tuple(draw(hst.permutations(range(len(shape)))))}


def _squeeze(draw: Any, name: str):
    shape = list(draw(_shapes))
    if name == "squeeze":
        for _ in range(draw(hst.integers(1, 2))):
            shape.insert(draw(hst.integers(0, len(shape))), 1)
        ones = [i for i, d in enumerate(shape) if d == 1]
        dims = tuple(sorted(draw(hst.sets(hst.sampled_from(ones), min_size=1))))
    else:
        dims = (draw(hst.integers(0, len(shape))),)
    return _inputs((tuple(shape), F32)), {"dimensions": dims}


def _concatenate(draw: Any, name: str):
    shape = draw(_nonscalar)
    dim = draw(hst.integers(0, len(shape) - 1))
    sizes = draw(hst.lists(hst.integers(1, 4), min_size=1, max_size=3))
    types = [((*shape[:dim], s, *shape[dim + 1 :]), F32) for s in sizes]
    return _inputs(*types), {"dimension": dim}


def _slice(draw: Any, name: str):
    shape = draw(_shapes)
    start = [draw(hst.integers(0, d)) for d in shape]
    limit = [draw(hst.integers(s, d)) for s, d in zip(start, shape)]
    strides = [draw(hst.integers(1, 3)) for _ in shape]
    return _inputs((shape, F32)), {"start_indices": tuple(start), "limit_indices": tuple(limit),
                                   "strides": tuple(strides)}  # fmt: skip


def _dynamic_slice(draw: Any, name: str):
    shape = draw(_shapes)
    sizes = tuple(draw(hst.integers(0, d)) for d in shape)
    return _inputs((shape, F32), *[((), I32)] * len(shape)), {"slice_sizes": sizes}


def _select(draw: Any, name: str):
    shape = draw(_shapes)
    if name == "clamp":
        lo, hi = (draw(hst.sampled_from([shape, ()])) for _ in range(2))
        return _inputs((lo, F32), (shape, F32), (hi, F32)), {}
    n = draw(hst.integers(2, 3))
    pred = BOOL if n == 2 else I32
    return _inputs((shape, pred), *[(shape, F32)] * n), {}


def _other(draw: Any, name: str):
    if name == "integer_pow":
        return _inputs((draw(_shapes), F32)), {"y": draw(hst.integers(-3, 3))}
    if name == "convert_element_type":
        new = draw(hst.sampled_from([F32, I32, BOOL, np.dtype(np.float16)]))
        return _inputs((draw(_shapes), F32)), {"new_dtype": new}
    if name == "iota":
        shape = draw(_nonscalar)
        return [], {"dtype": draw(hst.sampled_from([F32, I32])), "shape": shape,
                    "dimension": draw(hst.integers(0, len(shape) - 1))}  # fmt: skip
    if name == "literal":
        return [], {"value": draw(hst.sampled_from([1.5, -2.0, 0.0])), "dtype": F32}
    raise AssertionError(f"no case for {name}")


_OTHER = {"integer_pow", "convert_element_type", "iota", "literal"}


_CASES = {
    "unary": _unary, "binary": _binary, "dot_general": _dot, "reduce": _reduce,
    "argreduce": _reduce, "broadcast_in_dim": _broadcast, "reshape": _reshape,
    "transpose": _transpose, "squeeze": _squeeze, "concatenate": _concatenate,
    "slice": _slice, "dynamic_slice": _dynamic_slice, "select_n": _select, "ternary": _select,
}  # fmt: skip
# Gather's parameters come from JAX's indexing; the trace-based check below covers it.
_TRACE_ONLY = {"gather"}
_TYPED_OPS = sorted(n for n in registered_ops() if not _exempt(n) and n not in _TRACE_ONLY)


@pytest.mark.parametrize("name", _TYPED_OPS)
def test_type_rule_agrees_with_jax(name: str) -> None:
    opdef = get_op(name)
    case = _CASES.get(opdef.category, _other if name in _OTHER else None)
    assert case is not None, f"test_ir has no case generator for op {name!r}; add one"

    @settings(max_examples=15)
    @given(hst.composite(lambda draw: case(draw, name))())
    def check(drawn: tuple[list[Node], dict[str, Any]]) -> None:
        args, params = drawn
        p = Params(params)
        shape, dtype = infer_type(name, args, p)
        structs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
        expected = jax.eval_shape(lambda *xs: opdef.lower(*xs, **p), *structs)
        assert (tuple(shape), np.dtype(dtype)) == (expected.shape, np.dtype(expected.dtype)), (
            f"{name}{[a.shape for a in args]} {p.key}"
        )

    check()


@settings(max_examples=30)
@given(sot.programs(max_ops=6))
def test_type_rules_agree_with_traced_avals(case: sot.ProgramCase) -> None:
    # Tracing takes each node's type from JAX's aval; the registry must infer the same.
    program = superopt.trace(case.fn, *case.args).program
    for node in program.nodes():
        if node.op in _EXEMPT:
            continue
        shape, dtype = infer_type(node.op, node.args, node.params)
        assert (tuple(shape), np.dtype(dtype)) == (node.shape, node.dtype), node


@pytest.mark.parametrize(
    "name, types, params",
    [
        ("add", [((2, 3), F32), ((3, 2), F32)], {}),
        ("add", [((2, 3), F32), ((2, 3), I32)], {}),
        ("dot_general", [((2, 3), F32), ((4, 5), F32)],
         {"dimension_numbers": (((1,), (0,)), ((), ())), "preferred_element_type": None}),
        ("reshape", [((2, 3), F32)], {"new_sizes": (4, 2)}),
        ("transpose", [((2, 3), F32)], {"permutation": (0, 0)}),
        ("reduce_sum", [((2, 3), F32)], {"axes": (2,)}),
        ("broadcast_in_dim", [((3,), F32)], {"shape": (2, 4), "broadcast_dimensions": (1,)}),
        ("squeeze", [((2, 3), F32)], {"dimensions": (0,)}),
        ("concatenate", [((2, 3), F32), ((3, 3), F32)], {"dimension": 1}),
        ("slice", [((4,), F32)], {"start_indices": (1,), "limit_indices": (6,), "strides": (1,)}),
        ("select_n", [((3,), F32), ((3,), F32), ((3,), F32)], {}),
    ],
)  # fmt: skip
def test_make_rejects_bad_shapes(name: str, types: list, params: dict) -> None:
    with pytest.raises(ShapeError):
        make(name, *_inputs(*types), **params)


def test_make_builds_typed_nodes() -> None:
    a, b = _inputs(((2, 3), F32), ((3, 5), F32))
    node = make("dot_general", a, b, dimension_numbers=(((1,), (0,)), ((), ())),
                preferred_element_type=None)  # fmt: skip
    assert node.shape == (2, 5) and node.dtype == F32
    assert node_cost(node).flops == 2 * 2 * 5 * 3
    assert make("reduce_sum", node, axes=(1,)).shape == (2,)


def test_a_dot_without_a_precision_is_a_default_dot() -> None:
    # Code that builds dots without naming a precision gets the traced default's params.
    a, b = _inputs(((2, 3), F32), ((3, 5), F32))
    dims = (((1,), (0,)), ((), ()))
    made = make("dot_general", a, b, dimension_numbers=dims, preferred_element_type=None)
    assert made.params == make("dot_general", a, b, dimension_numbers=dims,
                               preferred_element_type=None, precision=None).params  # fmt: skip
    traced = superopt.trace(lambda x, y: lax.dot(x, y), jnp.ones((2, 3)), jnp.ones((3, 5)))
    (dot,) = [n for n in traced.program.nodes() if n.op == "dot_general"]
    assert dot.params == made.params
    # One form per precision: the default is None, an explicit one a tuple of names.
    for bad in [("DEFAULT", "DEFAULT"), ["HIGHEST", "HIGHEST"], "highest", ("FAST", "FAST")]:
        with pytest.raises(ShapeError, match="precision"):
            make("dot_general", a, b, dimension_numbers=dims, preferred_element_type=None,
                 precision=bad)  # fmt: skip


def test_cost_adds_up() -> None:
    total = Cost(1, 2, 3, 4) + Cost(10, 20, 30, 40)
    assert total == Cost(11, 22, 33, 44) and total.bytes == 77


def test_unknown_op_is_a_clear_error() -> None:
    with pytest.raises(superopt.UnsupportedPrimitiveError, match="fft"):
        get_op("fft")


def test_program_checks_input_numbering() -> None:
    x, y = _inputs(((2,), F32), ((2,), F32))
    with pytest.raises(IRError, match="input 0"):
        Program((y, x), (make("add", x, y),))


def _affine(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.tanh(x @ w + jnp.asarray([[1.0, 2.0, 3.0]])) * 2.0


def _key(fn: Any, *shapes: tuple[int, ...]) -> str:
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    return superopt.trace(fn, *args).program.canonical_key()


def test_canonical_key_equal_for_equal_programs() -> None:
    # Two traces build distinct node objects; the keys must still agree.
    assert _key(_affine, (2, 4), (4, 3)) == _key(_affine, (2, 4), (4, 3))

    def same_but_renamed(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.tanh(a @ b + jnp.asarray([[1.0, 2.0, 3.0]])) * 2.0

    assert _key(same_but_renamed, (2, 4), (4, 3)) == _key(_affine, (2, 4), (4, 3))


def test_canonical_key_differs_for_different_programs() -> None:
    base = _key(_affine, (2, 4), (4, 3))

    def other_const(x: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.tanh(x @ w + jnp.asarray([[1.0, 2.0, 3.5]])) * 2.0

    def other_literal(x: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.tanh(x @ w + jnp.asarray([[1.0, 2.0, 3.0]])) * 3.0

    def other_op(x: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.sin(x @ w + jnp.asarray([[1.0, 2.0, 3.0]])) * 2.0

    keys = {
        base,
        _key(_affine, (5, 4), (4, 3)),
        _key(other_const, (2, 4), (4, 3)),
        _key(other_literal, (2, 4), (4, 3)),
        _key(other_op, (2, 4), (4, 3)),
    }
    assert len(keys) == 5


def test_canonical_key_sees_dtype_and_output_order() -> None:
    def pair(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return x + y, x * y

    def swapped(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return x * y, x + y

    spec = jax.ShapeDtypeStruct((3,), jnp.float32)
    half = jax.ShapeDtypeStruct((3,), jnp.float16)
    k = superopt.trace(pair, spec, spec).program.canonical_key()
    assert k != superopt.trace(swapped, spec, spec).program.canonical_key()
    assert k != superopt.trace(pair, half, half).program.canonical_key()


def test_count_ops_and_params_key() -> None:
    program = superopt.trace(_affine, jnp.ones((2, 4)), jnp.ones((4, 3))).program
    counts = program.count_ops()
    assert counts["dot_general"] == 1 and counts["tanh"] == 1 and counts["input"] == 2
    assert Params(b=1, a=(2, 3)).key == Params(a=(2, 3), b=1).key == "a=(2,3);b=1"
    assert Params(a=1) != Params(a=2)


def test_pow_takes_an_integer_exponent_like_lax():
    import jax
    from jax import lax

    x = Node("input", (), Params(index=0), (3,), np.dtype("float32"))
    n = Node("input", (), Params(index=1), (3,), np.dtype("int32"))
    node = make("pow", x, n)
    expected = jax.eval_shape(lax.pow, jax.ShapeDtypeStruct((3,), "float32"),
                              jax.ShapeDtypeStruct((3,), "int32"))  # fmt: skip
    assert (node.shape, node.dtype) == (expected.shape, expected.dtype)
