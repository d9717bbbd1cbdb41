"""Scalar hoist: `(s * A) @ B` with a small output becomes `s * (A @ B)`.

Scaling the big operand reads and writes all of A before the product; scaling the
product touches only its few columns. The rule `scalar_out_of_dot` (and its inverse,
`scalar_into_dot`) put every placement of the scalar in the e-graph, and the cost model
picks the smallest side. Exact up to rounding.

Run it with `python examples/scalar_hoist.py`; `superopt bench` runs it with the others.
"""

from __future__ import annotations

import jax
import numpy as np
from jaxtyping import Array, Float

import superopt

M, K, P = 4096, 1024, 4


def scaled(
    s: Float[Array, ""], a: Float[Array, "m k"], b: Float[Array, "k p"]
) -> Float[Array, "m p"]:
    """A scaled matrix times a thin matrix."""
    return (s * a) @ b


def make_args(m: int = M, k: int = K, p: int = P, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A random scalar `s`, `A` (m×k) and a thin `B` (k×p), float32."""
    rng = np.random.default_rng(seed)
    s = np.float32(rng.uniform(0.5, 2.0))
    a = rng.normal(size=(m, k)).astype(np.float32)
    return s, a, rng.normal(size=(k, p)).astype(np.float32) / np.sqrt(k)


CASE = (scaled, make_args)


def main(budget_s: float = 0.5) -> list[superopt.Optimized]:
    """Optimize the scaled product, time it against `jax.jit`, and print both."""
    args = make_args()
    opt = superopt.optimize(scaled, *args, budget=0, cost_model="flops")
    times = superopt.time_callables({"jit": jax.jit(scaled), "opt": opt}, args, budget_s=budget_s)
    speed = superopt.speedup(times["jit"], times["opt"])
    print(f"jax.jit: {times['jit'].median_s * 1e3:.3f} ms")
    print(f"superopt: {times['opt'].median_s * 1e3:.3f} ms  ({speed:.1f}x, ", end="")
    print(f"verified={opt.report.verified}, rewrites={[s.rule for s in opt.report.rewrites]})")
    return [opt]


if __name__ == "__main__":
    main()
