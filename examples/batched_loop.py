"""Batched loop: a Python loop of 64 same-shape matmuls as one batched `dot_general`.

A loop over independent products traces to 64 separate dots, each a kernel of its own.
The fusion rule `batch_dots` stacks the operands, runs one batched dot and slices the
results back out; since the loop stacks its results again, the search also knows that
the stack of those slices is the batched result itself, and the extraction takes it
when the saved kernel launches pay for stacking the operands. On a CPU that holds for
small matrices (here 16×16); at 64×64 the copies cost more than the launches saved.

Run it with `python examples/batched_loop.py`; `superopt bench` runs it with the others.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import superopt

COUNT, N = 64, 16


def loop(xs: list[Float[Array, "n n"]], ws: list[Float[Array, "n n"]]) -> Float[Array, "k n n"]:
    """Each `x @ w` of two lists, stacked."""
    return jnp.stack([x @ w for x, w in zip(xs, ws)])


def make_args(count: int = COUNT, n: int = N, seed: int = 0) -> tuple[list[np.ndarray], ...]:
    """Two lists of `count` random n×n float32 matrices."""
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, n)).astype(np.float32) for _ in range(count)]
    ws = [rng.normal(size=(n, n)).astype(np.float32) / np.sqrt(n) for _ in range(count)]
    return xs, ws


CASE = (loop, make_args)


def main(budget_s: float = 0.5) -> list[superopt.Optimized]:
    """Optimize the loop, time it against `jax.jit`, and print both."""
    args = make_args()
    opt = superopt.optimize(loop, *args, budget=0, cost_model="flops")
    times = superopt.time_callables({"jit": jax.jit(loop), "opt": opt}, args, budget_s=budget_s)
    speed = superopt.speedup(times["jit"], times["opt"])
    print(f"jax.jit: {times['jit'].median_s * 1e3:.3f} ms")
    print(f"superopt: {times['opt'].median_s * 1e3:.3f} ms  ({speed:.1f}x, ", end="")
    print(f"verified={opt.report.verified}, rewrites={[s.rule for s in opt.report.rewrites]})")
    return [opt]


if __name__ == "__main__":
    main()
