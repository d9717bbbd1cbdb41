"""Work done on a big intermediate that could be done on a small one.

`jnp.sum(x @ w, axis=0)` builds the whole m×k product and then sums it; summing `x`
first, `jnp.sum(x, axis=0) @ w`, needs a vector-matrix product only. A scalar factor on
the big side of a matmul, `(s * x) @ w`, costs m·n multiplies where `s * (x @ w)` costs
m·k. These are the "push the cheap operation to the small side" rewrites.

Run it with `python examples/demo_reductions.py`, or all demos with `superopt demo`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

import superopt


def column_sums(x: Float[Array, "m n"], w: Float[Array, "n k"]) -> Float[Array, " k"]:
    """The column sums of a product."""
    return jnp.sum(x @ w, axis=0)


def scaled_product(x: Float[Array, "m n"], w: Float[Array, "n k"]) -> Float[Array, "m k"]:
    """A product with a scalar factor applied to the larger operand."""
    return (0.5 * x) @ w


def cases(rows: int = 8192) -> list[tuple[str, Callable[..., Any], tuple[Any, ...]]]:
    """The demo's programs with example arguments: (name, function, args). With a few
    hundred rows, a call is tens of microseconds, mostly dispatch: too small for the
    intermediate to matter, and below the programs the cost model was trained on."""
    k1, k2 = jax.random.split(jax.random.key(1))
    x = jax.random.normal(k1, (rows, 128))
    w = jax.random.normal(k2, (128, 8))
    return [("column_sums", column_sums, (x, w)), ("scaled_product", scaled_product, (x, w))]


def main() -> list[superopt.Optimized]:
    """Optimize each program, print its report, and check the result."""
    results = []
    for name, fn, args in cases():
        opt = superopt.optimize(fn, *args)
        print(opt.report)
        assert jnp.allclose(opt(*args), fn(*args), rtol=1e-3, atol=1e-3), name
        results.append(opt)
    return results


if __name__ == "__main__":
    main()
