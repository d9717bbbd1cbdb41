"""A small MLP with a softmax cross-entropy loss: pytrees in, a scalar out, gradients through.

This is what a user's training step looks like: parameters in a dict, a batch, a loss.
superopt optimizes the forward loss; the result is a JAX function like any other, so
`jax.grad` and `jax.vmap` go through it. Whatever the search finds (or does not find),
the returned function computes the same loss and gradients as the original.

Run it with `python examples/demo_mlp.py`, or all demos with `superopt demo`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

import superopt


def loss(
    params: dict[str, Array], x: Float[Array, "batch features"], labels: Int[Array, " batch"]
) -> Float[Array, ""]:
    """Mean cross-entropy of a two-layer MLP."""
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"][None, :])
    logits = hidden @ params["w2"] + params["b2"][None, :]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def cases(batch: int = 32) -> list[tuple[str, Callable[..., Any], tuple[Any, ...]]]:
    """The demo's program with example arguments: (name, function, args)."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(2), 4)
    params = {
        "w1": jax.random.normal(k1, (64, 128)) / 8.0,
        "b1": jnp.zeros(128),
        "w2": jax.random.normal(k2, (128, 10)) / 11.0,
        "b2": jnp.zeros(10),
    }
    x = jax.random.normal(k3, (batch, 64))
    labels = jax.random.randint(k4, (batch,), 0, 10)
    return [("mlp_loss", loss, (params, x, labels))]


def main() -> list[superopt.Optimized]:
    """Optimize the loss, print the report, and compare values and gradients."""
    results = []
    for name, fn, args in cases():
        opt = superopt.optimize(fn, *args)
        print(opt.report)
        assert jnp.allclose(opt(*args), fn(*args), rtol=1e-4, atol=1e-5), name
        grads = jax.grad(opt)(*args)
        expected = jax.grad(fn)(*args)
        for key in expected:
            assert jnp.allclose(grads[key], expected[key], rtol=1e-3, atol=1e-5), key
        results.append(opt)
    return results


if __name__ == "__main__":
    main()
