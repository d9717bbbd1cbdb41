"""Matrix products in a costly order, the biggest wins a superoptimizer finds on XLA.

`(a @ b) @ v` multiplies two n×n matrices before touching the vector: n³ multiply-adds.
`a @ (b @ v)` does the same with two matrix-vector products: 2n². XLA keeps the order the
program wrote. Likewise `a @ b + a @ c` does two products where `a @ (b + c)` does one.
Both rewrites are exact in real arithmetic, so superopt may apply them after checking
the result on random inputs; floating-point rounding differs a little, within tolerance.

Run it with `python examples/demo_matmul_chain.py`, or all demos with `superopt demo`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import superopt


def chain(
    a: Float[Array, "n n"], b: Float[Array, "n n"], v: Float[Array, "n k"]
) -> Float[Array, "n k"]:
    """A product of three matrices, the two big ones first."""
    return (a @ b) @ v


def shared_operand(
    a: Float[Array, "m n"], b: Float[Array, "n k"], c: Float[Array, "n k"]
) -> Float[Array, "m k"]:
    """Two products that share their left operand."""
    return a @ b + a @ c


def cases(size: int = 128) -> list[tuple[str, Callable[..., Any], tuple[Any, ...]]]:
    """The demo's programs with example arguments: (name, function, args)."""
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(0), 5)
    a = jax.random.normal(k1, (size, size))
    b = jax.random.normal(k2, (size, size)) / np.sqrt(size)
    v = jax.random.normal(k3, (size, 4))
    c = jax.random.normal(k4, (size, size // 2))
    d = jax.random.normal(k5, (size, size // 2))
    return [("matmul_chain", chain, (a, b, v)), ("shared_operand", shared_operand, (a, c, d))]


def main() -> list[superopt.Optimized]:
    """Optimize each program, print its report and source, and check the result."""
    results = []
    for name, fn, args in cases():
        opt = superopt.optimize(fn, *args)
        print(opt.report)
        print(opt.source)
        assert jnp.allclose(opt(*args), fn(*args), rtol=1e-3, atol=1e-3), name
        results.append(opt)
    return results


if __name__ == "__main__":
    main()
