"""Tests of `superopt.time_callables`: behaviour (ordering, budgets, counts), not times."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superopt
from superopt._measure import Timing, speedup


def test_huge_margin_is_ordered():
    x = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    s = np.float32(1.5)

    def matmuls(a, b):
        # A few dependent matmuls keep the margin large even on a loaded machine.
        return (a @ a) @ a + b

    def scalar_add(a, b):
        return b + 1

    timings = superopt.time_callables(
        {"matmuls": matmuls, "add": scalar_add}, (x, s), min_rounds=5, max_rounds=10
    )
    assert list(timings) == ["matmuls", "add"]
    assert timings["add"].median_s < timings["matmuls"].median_s
    assert superopt.speedup(timings["matmuls"], timings["add"]) > 1


def test_at_least_min_rounds_even_with_no_budget():
    def f(x):
        return x * 2

    timings = superopt.time_callables({"f": f}, (jnp.ones(4),), min_rounds=7, budget_s=0.0)
    assert timings["f"].n == 7


def test_max_rounds_caps_fast_callables():
    timings = superopt.time_callables(
        {"f": lambda x: x + 1, "g": lambda x: x - 1},
        (jnp.ones(8),),
        min_rounds=3,
        max_rounds=12,
        budget_s=60.0,
    )
    assert timings["f"].n == timings["g"].n == 12


def test_budget_is_honoured():
    def slow(x):
        # A host callback that sleeps makes every call take about 20 ms, whatever XLA does.
        def nap(v):
            time.sleep(0.02)
            return v

        return jax.pure_callback(nap, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    start = time.perf_counter()
    timings = superopt.time_callables(
        {"slow": slow}, (jnp.ones(3),), warmup=0, min_rounds=2, max_rounds=1000, budget_s=0.2
    )
    wall = time.perf_counter() - start
    timing = timings["slow"]
    assert 2 <= timing.n < 1000
    # The budget stops new rounds once spent: one round of overshoot at most.
    assert timing.n * timing.median_s <= 0.2 + 3 * timing.p75_s + 0.05
    assert wall < 2.0
    assert timing.min_s >= 0.015


def test_rounds_are_interleaved_and_rotated():
    order: list[str] = []

    def tracer(name):
        def fn(x):
            jax.debug.callback(lambda: order.append(name))
            return x + 1

        return fn

    superopt.time_callables(
        {k: tracer(k) for k in "abc"},
        (jnp.ones(2),),
        warmup=0,
        min_rounds=3,
        max_rounds=3,
        budget_s=0.0,
    )
    # One compile-and-run call each, then three rounds in rotated order.
    assert order == list("abc") + list("abc") + list("bca") + list("cab")


def test_timing_summary_and_speedup():
    timing = Timing.from_samples([4.0, 1.0, 3.0, 2.0, 5.0])
    assert timing.median_s == 3.0 and timing.min_s == 1.0 and timing.n == 5
    assert timing.p25_s == 2.0 and timing.p75_s == 4.0
    assert timing.spread == pytest.approx(2.0 / 3.0)
    fast = Timing.from_samples([1.0])
    assert speedup(timing, fast) == 3.0
    assert speedup(fast, timing) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        Timing.from_samples([])


def test_bad_round_limits_are_rejected():
    with pytest.raises(ValueError, match="min_rounds"):
        superopt.time_callables({"f": lambda x: x}, (1.0,), min_rounds=5, max_rounds=2)


def test_pytree_arguments_and_outputs():
    def f(tree):
        return {"s": tree["a"].sum() + tree["b"][0]}

    args = ({"a": jnp.ones((3, 3)), "b": [jnp.float32(2.0)]},)
    timings = superopt.time_callables({"f": f}, args, min_rounds=2, max_rounds=2)
    assert timings["f"].n == 2 and timings["f"].median_s > 0
