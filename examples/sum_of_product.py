"""Sum of a product: `sum(A @ B)` computed as `sum(A, 0) @ sum(B, 1)`.

Summing every entry of a matrix product needs no product at all: the total is the dot
of A's column sums with B's row sums, 2n² additions instead of n³ multiply-adds. The
rule `sum_of_dot` puts that form in the e-graph; rounding differs a little (the sums are
taken in another order), well within float32 tolerance for the verifier.

Run it with `python examples/sum_of_product.py`; `superopt bench` runs it with the others.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import superopt

N = 1024


def total(a: Float[Array, "n n"], b: Float[Array, "n n"]) -> Float[Array, ""]:
    """The sum of all entries of `a @ b`."""
    return jnp.sum(a @ b)


def make_args(n: int = N, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Random `A` and `B` (n×n) in float32."""
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(n, n)).astype(np.float32) / np.sqrt(n) for _ in range(2))


CASE = (total, make_args)


def main(budget_s: float = 0.5) -> list[superopt.Optimized]:
    """Optimize the sum, time it against `jax.jit`, and print both."""
    args = make_args()
    opt = superopt.optimize(total, *args, budget=0, cost_model="flops")
    times = superopt.time_callables({"jit": jax.jit(total), "opt": opt}, args, budget_s=budget_s)
    speed = superopt.speedup(times["jit"], times["opt"])
    print(f"jax.jit: {times['jit'].median_s * 1e3:.3f} ms")
    print(f"superopt: {times['opt'].median_s * 1e3:.3f} ms  ({speed:.1f}x, ", end="")
    print(f"verified={opt.report.verified}, rewrites={[s.rule for s in opt.report.rewrites]})")
    return [opt]


if __name__ == "__main__":
    main()
