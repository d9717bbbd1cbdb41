"""An MLP forward pass: three dense layers with biases and GELU, a batch of 1024.

This is the bread and butter of a model: a chain of `x @ w + b` and a nonlinearity.
XLA already fuses the bias and activation into each matmul's neighbourhood, and the
matmuls cannot be reordered (an activation sits between each pair), so there is little
for a superoptimizer to win; what matters is that the search, the cost model and the
verifier leave a program like this as fast as `jax.jit` makes it, in a few seconds.

Run it with `python examples/mlp.py`; `superopt bench` runs it with the others at the
sizes of `CASE`.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
from jaxtyping import Array, Float

import superopt

BATCH, WIDTHS = 1024, (512, 1024, 1024, 256)


def mlp(x: Float[Array, "b d"], params: list[tuple[Array, Array]]) -> Float[Array, "b k"]:
    """Dense layers with GELU between them (none after the last)."""
    for i, (w, b) in enumerate(params):
        x = x @ w + b[None, :]
        if i < len(params) - 1:
            x = jax.nn.gelu(x)
    return x


def make_args(
    batch: int = BATCH, widths: tuple[int, ...] = WIDTHS, seed: int = 0
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Inputs `[batch, widths[0]]` and one `(w, b)` per consecutive pair of widths."""
    rng = np.random.default_rng(seed)
    params = [
        (
            (rng.normal(size=(m, n)) / np.sqrt(m)).astype(np.float32),
            (0.1 * rng.normal(size=n)).astype(np.float32),
        )
        for m, n in itertools.pairwise(widths)
    ]
    return rng.normal(size=(batch, widths[0])).astype(np.float32), params


CASE = (mlp, make_args)


def main(budget_s: float = 0.5, batch: int = 128) -> list[superopt.Optimized]:
    """Optimize the MLP (a small batch by default), time it against `jax.jit`, print both."""
    args = make_args(batch=batch)
    opt = superopt.optimize(mlp, *args, budget=0)
    times = superopt.time_callables({"jit": jax.jit(mlp), "opt": opt}, args, budget_s=budget_s)
    speed = superopt.speedup(times["jit"], times["opt"])
    print(f"jax.jit: {times['jit'].median_s * 1e3:.3f} ms")
    print(f"superopt: {times['opt'].median_s * 1e3:.3f} ms  ({speed:.2f}x, ", end="")
    print(f"verified={opt.report.verified}, rewrites={[s.rule for s in opt.report.rewrites]})")
    return [opt]


if __name__ == "__main__":
    main(budget_s=2.0, batch=BATCH)
