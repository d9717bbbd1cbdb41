"""Distributivity: `A @ B + A @ C` factored into `A @ (B + C)`.

Two products that share their left operand cost twice what one product of the summed
right operands costs; the addition is cheap by comparison. The rule `dot_factor_left`
puts the factored form in the e-graph (`dot_factor_right` does the same on the right,
`dot_expand` the other way). Exact up to rounding.

Run it with `python examples/distributivity.py`; `superopt bench` runs it with the others.
"""

from __future__ import annotations

import jax
import numpy as np
from jaxtyping import Array, Float

import superopt

N = 768


def shared(
    a: Float[Array, "n n"], b: Float[Array, "n n"], c: Float[Array, "n n"]
) -> Float[Array, "n n"]:
    """Two products sharing their left operand, added."""
    return a @ b + a @ c


def make_args(n: int = N, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Random `A`, `B`, `C` (n×n) in float32."""
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(n, n)).astype(np.float32) / np.sqrt(n) for _ in range(3))


CASE = (shared, make_args)


def main(budget_s: float = 0.5) -> list[superopt.Optimized]:
    """Optimize the sum of products, time it against `jax.jit`, and print both."""
    args = make_args()
    opt = superopt.optimize(shared, *args, budget=0, cost_model="flops")
    times = superopt.time_callables({"jit": jax.jit(shared), "opt": opt}, args, budget_s=budget_s)
    speed = superopt.speedup(times["jit"], times["opt"])
    print(f"jax.jit: {times['jit'].median_s * 1e3:.3f} ms")
    print(f"superopt: {times['opt'].median_s * 1e3:.3f} ms  ({speed:.1f}x, ", end="")
    print(f"verified={opt.report.verified}, rewrites={[s.rule for s in opt.report.rewrites]})")
    return [opt]


if __name__ == "__main__":
    main()
