"""Tests of `superopt.time_callables`: behaviour (ordering, budgets, counts), not times."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
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
    assert timing.faults_per_call is None
    assert Timing.from_samples([1.0, 2.0, 3.0], faults=[0, 4096, 4100]).faults_per_call == 4096


def test_bad_round_limits_are_rejected():
    with pytest.raises(ValueError, match="min_rounds"):
        superopt.time_callables({"f": lambda x: x}, (1.0,), min_rounds=5, max_rounds=2)


def test_pytree_arguments_and_outputs():
    def f(tree):
        return {"s": tree["a"].sum() + tree["b"][0]}

    args = ({"a": jnp.ones((3, 3)), "b": [jnp.float32(2.0)]},)
    timings = superopt.time_callables({"f": f}, args, min_rounds=2, max_rounds=2)
    assert timings["f"].n == 2 and timings["f"].median_s > 0


_FRESH_BUFFERS = """
import json, jax.numpy as jnp, superopt
x = jnp.ones((4096, 1024), jnp.float32)
f = lambda x: x * 2.0 + 1.0  # a 16 MiB output, every call
t = superopt.time_callables({"f": f}, (x,), min_rounds=5, max_rounds=5)["f"]
print(json.dumps(t.faults_per_call))
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)
def test_page_faults_of_buffers_mapped_afresh_every_call_are_counted():
    # glibc told to map every block of 1 MiB or more afresh (and unmap it when freed): each
    # call's 16 MiB output is then 4,096 new pages for the system to fault in.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run(
        [sys.executable, "-c", _FRESH_BUFFERS], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) >= 4096


def test_faults_are_counted_in_process():
    timings = superopt.time_callables({"f": lambda x: x + 1}, (jnp.ones(8),), max_rounds=5)
    faults = timings["f"].faults_per_call
    if platform.system() == "Windows":
        assert faults is None
    else:
        assert faults is not None and 0 <= faults < 16  # nothing new to map for 8 floats
