"""Tests of `superopt.verify`: planted wrong candidates are caught, correct rewrites pass."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import superopt
from superopt._verify import Check, random_like, verify_outputs


def _mats(n: int = 3, size: int = 32, dtype: type = np.float32, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((size, size)).astype(dtype) for _ in range(n)]


# --- planted wrong candidates -----------------------------------------------------------


def test_swapped_transpose_on_square_matrix_is_caught():
    (a,) = _mats(1)
    verdict = superopt.verify(lambda x: x.T @ x, lambda x: x @ x.T, a)
    assert not verdict
    assert verdict.where.startswith("user inputs, output, index")
    assert "rtol" in verdict.message


def test_dropped_scale_factor_is_caught():
    a, b = _mats(2)
    verdict = superopt.verify(lambda x, y: 0.5 * (x @ y), lambda x, y: x @ y, a, b)
    assert not verdict.ok
    assert verdict.max_rel_error > 0.1


def test_off_by_one_slice_is_caught():
    x = np.arange(20, dtype=np.float32) ** 2
    verdict = superopt.verify(lambda v: v[2:10], lambda v: v[3:11], x)
    assert not verdict


def test_wrong_reduction_axis_is_caught():
    (a,) = _mats(1)
    verdict = superopt.verify(lambda x: x.sum(axis=0), lambda x: x.sum(axis=1), a)
    assert not verdict


def test_sign_flip_in_one_element_is_caught():
    (a,) = _mats(1)
    a[3, 4] = 2.0  # a clearly non-negligible element, so the user inputs alone decide
    verdict = superopt.verify(lambda x: x * 3, lambda x: (x * 3).at[3, 4].multiply(-1), a)
    assert not verdict
    assert verdict.where == "user inputs, output, index (3, 4)"
    assert "-6" in verdict.message and "6" in verdict.message


def test_introduced_nan_is_caught_and_matching_nans_pass():
    x = np.linspace(-1, 1, 11, dtype=np.float32)
    bad = superopt.verify(lambda v: v + 1, lambda v: (v + 1).at[5].set(jnp.nan), x)
    assert not bad
    assert bad.max_rel_error == math.inf
    assert "nan" in bad.message
    # Both produce NaN at the same places (log of negatives): that is agreement.
    same = superopt.verify(lambda v: jnp.log(v), lambda v: jnp.log(v * 1.0), x)
    assert same, same.message


def test_reference_nan_where_candidate_is_finite_is_caught():
    x = np.array([1.0, 0.0, 2.0], np.float32)
    verdict = superopt.verify(lambda v: v / v, lambda v: jnp.ones_like(v), x, num_random=0)
    assert not verdict


def test_equal_infinities_match_and_opposite_ones_do_not():
    x = np.array([1.0, 0.0, -2.0], np.float32)
    assert superopt.verify(lambda v: 1 / v, lambda v: jnp.reciprocal(v), x, num_random=0)
    flipped = superopt.verify(
        lambda v: 1 / v, lambda v: jnp.where(v == 0, -jnp.inf, 1 / v), x, num_random=0
    )
    assert not flipped
    assert "-inf in the candidate but inf in the reference" in flipped.message


def test_int_output_off_by_one_is_caught():
    (a,) = _mats(1)
    verdict = superopt.verify(
        lambda x: jnp.argmax(x, axis=1), lambda x: jnp.argmax(x, axis=1) + 1, a
    )
    assert not verdict
    assert "must match exactly" in verdict.message


def test_bool_output_must_match_exactly():
    x = np.linspace(-1, 1, 9, dtype=np.float32)
    assert not superopt.verify(lambda v: v > 0, lambda v: v >= 0, x)
    assert superopt.verify(lambda v: v > 0, lambda v: ~(v <= 0), x)


# --- correct rewrites -------------------------------------------------------------------


def test_reassociated_matmul_chain_passes_in_f32():
    a, b, c = _mats(3, size=64)
    verdict = superopt.verify(lambda x, y, z: (x @ y) @ z, lambda x, y, z: x @ (y @ z), a, b, c)
    assert verdict, verdict.message
    assert 0 < verdict.max_rel_error < 1e-4
    assert len(verdict.checks) == 4
    assert verdict.checks[0].inputs == "user inputs"


def test_reassociated_matmul_chain_passes_in_bf16():
    a, b, c = (m.astype(jnp.bfloat16) for m in _mats(3, size=64))
    verdict = superopt.verify(lambda x, y, z: (x @ y) @ z, lambda x, y, z: x @ (y @ z), a, b, c)
    assert verdict, verdict.message
    # ... and bf16's tolerance is not so loose that a real error slips through.
    assert not superopt.verify(lambda x, y: x @ y, lambda x, y: x @ y * 1.1, a, b)


def test_pytree_outputs_name_the_failing_leaf():
    (a,) = _mats(1)

    def ref(x):
        return {"loss": x.sum(), "grads": [x, 2 * x]}

    def cand(x):
        return {"loss": x.sum(), "grads": [x, 2 * x.T]}

    verdict = superopt.verify(ref, cand, a)
    assert not verdict
    assert "output['grads'][1]" in verdict.where
    assert superopt.verify(ref, lambda x: {"grads": [x, x + x], "loss": jnp.sum(x)}, a)


def test_int_arguments_keep_valid_indices_on_random_inputs():
    (a,) = _mats(1)
    idx = np.array([0, 5, 31], np.int32)
    # Out-of-range gathers clamp or fill differently in these two; drawing indices within
    # the user's range keeps both well defined.
    verdict = superopt.verify(
        lambda x, i: x[i], lambda x, i: jnp.take(x, i, axis=0, mode="fill"), a, idx
    )
    assert verdict, verdict.message


def test_static_argnums_are_passed_through():
    x = np.arange(16, dtype=np.float32)
    assert superopt.verify(
        lambda v, n: v[:n] * 2, lambda v, n: v[:n] + v[:n], x, 5, static_argnums=1
    )
    assert not superopt.verify(
        lambda v, n: v[:n], lambda v, n: v[1 : n + 1], x, 5, static_argnums=(1,)
    )


def test_python_scalar_arguments_keep_weak_typing():
    x = np.ones(4, jnp.bfloat16)
    verdict = superopt.verify(lambda v, s: v * s, lambda v, s: s * v, x, 2.0)
    assert verdict, verdict.message


# --- failures that are not numeric ------------------------------------------------------


def test_candidate_that_raises_is_a_failed_verdict():
    def broken(x):
        raise RuntimeError("kernel exploded")

    verdict = superopt.verify(lambda x: x, broken, np.ones(3, np.float32))
    assert not verdict
    assert "RuntimeError: kernel exploded" in verdict.message
    assert "`broken`" in verdict.message
    with pytest.raises(superopt.VerificationError, match="kernel exploded"):
        verdict.raise_if_failed()


def test_candidate_with_shape_error_at_trace_time_is_a_failed_verdict():
    a, b = _mats(2)
    verdict = superopt.verify(lambda x, y: x @ y, lambda x, y: x @ y[:3], a, b)
    assert not verdict
    assert "TypeError" in verdict.message


def test_reference_that_raises_is_an_error():
    with pytest.raises(superopt.VerificationError, match="reference"):
        superopt.verify(lambda x: x[:, 0], lambda x: x, np.ones(3, np.float32))


def test_mismatched_output_structure_fails_clearly():
    x = np.ones(3, np.float32)
    verdict = superopt.verify(lambda v: (v, v), lambda v: [v, v], x)
    assert not verdict
    assert "output structure" in verdict.message
    assert "reference: PyTreeDef((*, *))" in verdict.message
    verdict = superopt.verify(lambda v: (v, v), lambda v: v, x)
    assert not verdict


def test_mismatched_shape_or_dtype_fails():
    x = np.ones((2, 3), np.float32)
    assert "float32[3, 2]" in superopt.verify(lambda v: v, lambda v: v.T, x).message
    verdict = superopt.verify(lambda v: v, lambda v: v.astype(jnp.float16), x)
    assert not verdict and "float16" in verdict.message


def test_verdict_is_frozen_and_raise_if_failed_is_silent_on_success():
    verdict = superopt.verify(lambda v: v + v, lambda v: 2 * v, np.ones(3, np.float32))
    verdict.raise_if_failed()
    with pytest.raises(AttributeError):
        verdict.ok = False  # type: ignore[misc]


# --- the lower-level pieces -------------------------------------------------------------


def test_verify_outputs_robust_relative_error_tolerates_cancellation():
    ref = np.array([1000.0, 1e-6], np.float32)
    cand = np.array([1000.0, 2e-6], np.float32)  # tiny absolute error on a tiny element
    check = verify_outputs(ref, cand)
    assert isinstance(check, Check) and check.ok
    assert not verify_outputs(ref, cand, atol=1e-9).ok


def test_verify_outputs_explicit_rtol():
    ref = np.array([1.0, 2.0], np.float32)
    cand = np.array([1.0, 2.01], np.float32)
    assert not verify_outputs(ref, cand).ok
    assert verify_outputs(ref, cand, rtol=1e-2).ok


def test_random_like_respects_dtypes_and_ranges():
    leaves = [
        np.array([2, 7, 4], np.int32),
        np.zeros((2, 3), np.float32),
        np.array([True, False]),
        np.array([0.5, 3.0], np.float32),  # non-negative: draws stay non-negative
        3.0,
        jax.random.key(0),
    ]
    out = random_like(leaves, np.random.default_rng(1))
    assert out[0].dtype == np.int32 and out[0].min() >= 2 and out[0].max() <= 7
    assert out[1].dtype == np.float32 and out[1].shape == (2, 3) and np.any(out[1] != 0)
    assert out[2].dtype == np.bool_
    assert np.all(out[3] >= 0)
    assert isinstance(out[4], float)
    assert out[5] is leaves[5]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.integers(1, 500))
def test_random_floats_span_magnitudes(seed: int, size: int):
    (values,) = random_like([np.zeros(size, np.float32)], np.random.default_rng(seed))
    assert values.dtype == np.float32 and np.all(np.isfinite(values))
    if size >= 200:
        magnitudes = np.abs(values[values != 0])
        assert magnitudes.max() / magnitudes.min() > 100


def test_unhashable_static_argument_runs_without_jit():
    x = np.arange(6, dtype=np.float32)
    perm = [5, 4, 3, 2, 1, 0]  # a list: cannot be a jit static argument
    verdict = superopt.verify(
        lambda v, p: v[np.asarray(p)], lambda v, p: v[::-1], x, perm, static_argnums=1
    )
    assert verdict, verdict.message
    assert not superopt.verify(
        lambda v, p: v[np.asarray(p)], lambda v, p: v, x, perm, static_argnums=1
    )


def test_matmuls_are_compared_at_highest_precision():
    seen = []

    def ref(x):
        seen.append(jax.config.jax_default_matmul_precision)
        return x @ x

    superopt.verify(ref, lambda x: x @ x, np.eye(3, dtype=np.float32), num_random=0)
    assert seen and all(p == "highest" for p in seen)


def test_time_budget_skips_random_sets_but_keeps_user_inputs_and_one_random():
    a = np.ones((8, 8), np.float32)
    quick = superopt.verify(lambda x: x @ x, lambda x: x @ x, a, num_random=3, time_budget_s=0.0)
    assert quick and [c.inputs for c in quick.checks] == ["user inputs", "random inputs #1"]
    full = superopt.verify(lambda x: x @ x, lambda x: x @ x, a, num_random=3)
    assert len(full.checks) == 4
