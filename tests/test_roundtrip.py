"""Round trips of random programs: trace -> IR -> codegen must keep values, gradients
and vmapped values of the original function."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import roundtrip, scalar_loss
from hypothesis import given, settings

import superopt
import superopt.testing as sot
from superopt._codegen import render
from superopt._verify import verify_outputs

# Each round-trip test runs at least this many examples (more under the `dev` profile);
# the four together give the default run well over 200 programs.
_EXAMPLES = max(52, settings.default.max_examples)

_ELEMENTWISE = [
    *sot._UNARY, *sot._BINARY, "integer_pow", "select_n", "clamp", "convert_element_type",
]  # fmt: skip
_STRUCTURAL = [
    "dot_general", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
    "broadcast_in_dim", "reshape", "transpose", "squeeze", "add", "mul", "tanh",
]  # fmt: skip
_INDEXING = [
    "concatenate", "slice", "dynamic_slice", "gather", "iota", "convert_element_type",
    "broadcast_in_dim", "transpose", "exp", "sub",
]  # fmt: skip


def _everything(fn: Any):
    """One jitted function giving outputs, input gradients and vmapped outputs, so that
    each example compiles once per side."""

    def run(args: tuple[Any, ...], batched: tuple[Any, ...]):
        grads = jax.grad(scalar_loss(fn), argnums=tuple(range(len(args))))(*args)
        return fn(*args), grads, jax.vmap(fn)(*batched)

    return jax.jit(run)


def _check_roundtrip(case: sot.ProgramCase) -> None:
    args = case.arrays()
    rt = roundtrip(case.fn, *args)
    batched_specs = tuple(jax.ShapeDtypeStruct((3, *a.shape), a.dtype) for a in case.args)
    batched = tuple(sot.arrays_for(batched_specs, case.seed + 1))
    expected = _everything(case.fn)(args, batched)
    actual = _everything(rt)(args, batched)
    for what, a, e in zip(["outputs", "gradients", "vmapped outputs"], actual, expected):
        check = verify_outputs(e, a, inputs=f"the example inputs ({what})")
        assert check.ok, f"{check.message}\n{case}"


@settings(max_examples=_EXAMPLES)
@given(sot.programs(max_ops=5, ops=_ELEMENTWISE))
def test_roundtrip_elementwise(case: sot.ProgramCase) -> None:
    _check_roundtrip(case)


@settings(max_examples=_EXAMPLES)
@given(sot.programs(max_ops=5, ops=_STRUCTURAL))
def test_roundtrip_structural(case: sot.ProgramCase) -> None:
    _check_roundtrip(case)


@settings(max_examples=_EXAMPLES)
@given(sot.programs(max_ops=5, ops=_INDEXING))
def test_roundtrip_indexing(case: sot.ProgramCase) -> None:
    _check_roundtrip(case)


@settings(max_examples=_EXAMPLES)
@given(sot.programs(max_ops=7))
def test_roundtrip_mixed(case: sot.ProgramCase) -> None:
    _check_roundtrip(case)


@settings(max_examples=15)
@given(sot.programs(max_ops=5, dtypes=(jnp.float32, jnp.bfloat16, jnp.float16)))
def test_roundtrip_mixed_precision(case: sot.ProgramCase) -> None:
    _check_roundtrip(case)


def test_roundtrip_float64() -> None:
    with jax.enable_x64(True):

        @settings(max_examples=10)
        @given(sot.programs(max_ops=5, dtypes=(jnp.float64,)))
        def check(case: sot.ProgramCase) -> None:
            assert all(a.dtype == jnp.float64 for a in case.args)
            _check_roundtrip(case)

        check()


@settings(max_examples=25)
@given(sot.programs(max_ops=6))
def test_codegen_matches_interpreter(case: sot.ProgramCase) -> None:
    # The node-by-node interpreter and the compiled source are two independent readings
    # of one program; they must agree exactly in eager mode.
    args = case.arrays()
    program = superopt.trace(case.fn, *args).program
    compiled = superopt.to_callable(program)(*args)
    interpreted = superopt._codegen.evaluate(program, *args)
    for c, i in zip(compiled, interpreted):
        np.testing.assert_array_equal(np.asarray(c), np.asarray(i))


@pytest.mark.parametrize("op", sot.SUPPORTED_OPS)
def test_generator_emits_each_op(op: str) -> None:
    # Every op the strategy claims to cover must reach the traced IR as that op.
    seen: set[str] = set()

    @settings(max_examples=4)
    @given(sot.programs(max_ops=2, ops=[op]))
    def collect(case: sot.ProgramCase) -> None:
        assert op in case.ops
        traced = superopt.trace(case.fn, *case.args)
        # Steps whose value no output uses are dropped by tracing, so only the union
        # over the examples is checked.
        seen.update(traced.program.count_ops())

    collect()
    expected = "broadcast_in_dim" if op == "expand_dims" else op
    assert expected in seen


def test_check_equivalent_catches_a_wrong_rewrite() -> None:
    def f(x, y):
        return jnp.tanh(x) @ y

    def g(x, y):
        return jnp.tanh(x) @ (y * 1.001)

    spec = jax.ShapeDtypeStruct((3, 4), jnp.float32), jax.ShapeDtypeStruct((4, 2), jnp.float32)
    sot.check_equivalent(f, lambda x, y: jnp.dot(jnp.tanh(x), y), *spec, grad=True)
    with pytest.raises(AssertionError, match=r"outputs of .*output, index \(\d, \d\)"):
        sot.check_equivalent(f, g, *spec)


def test_check_equivalent_gradient_only_difference() -> None:
    def f(x):
        return jnp.sin(x)

    def g(x):
        # Same values, wrong derivative.
        return jax.lax.stop_gradient(jnp.sin(x))

    spec = jax.ShapeDtypeStruct((5,), jnp.float32)
    sot.check_equivalent(f, g, spec)
    with pytest.raises(AssertionError, match="gradients"):
        sot.check_equivalent(f, g, spec, grad=True)


def test_arrays_for_is_deterministic_and_typed() -> None:
    specs = {
        "x": jax.ShapeDtypeStruct((2, 3), jnp.float32),
        "i": jax.ShapeDtypeStruct((4,), jnp.int32),
        "b": jax.ShapeDtypeStruct((), jnp.bool_),
    }
    a, b, c = sot.arrays_for(specs, 1), sot.arrays_for(specs, 1), sot.arrays_for(specs, 2)
    assert a["x"].dtype == jnp.float32 and a["i"].dtype == jnp.int32 and a["b"].dtype == jnp.bool_
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], c["x"])
    assert np.all((a["i"] >= 0) & (a["i"] < 4))
    assert np.all(np.abs(a["x"]) <= 2)


def test_programs_rejects_unknown_ops() -> None:
    with pytest.raises(ValueError, match="cumsum"):
        sot.programs(ops=["cumsum"])


def test_roundtrip_complex_literals() -> None:
    # A complex scalar (a spectrum scaled by 1.5 - 2j) renders as a complex literal.
    def spectral(x, a, b):
        shifted = ((1.5 - 2j) * (a @ b)) @ jnp.fft.rfft(x).reshape(-1, 1)
        return jnp.fft.irfft(shifted[:, 0] * 0.5j), jnp.abs(shifted)

    x = jnp.linspace(-1.0, 1.0, 14)
    a = (jnp.arange(64.0).reshape(8, 8) / 64 + 1j).astype(jnp.complex64)
    b = jnp.eye(8, dtype=jnp.complex64) * (0.5 - 0.25j)
    rt = roundtrip(spectral, x, a, b)
    for got, want in zip(rt(x, a, b), spectral(x, a, b)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert "complex(1.5, -2.0)" in render(rt.traced.program, "spectral")
