"""A mixed-precision language-model head: bfloat16 weights, a float32 loss.

Mixed-precision training keeps the hidden states and the output projection in bfloat16
and takes the cross-entropy of float32 logits, `(h @ w).astype(jnp.float32)`. XLA folds
that upcast into the matmul, which accumulates in float32, and still builds the whole
`[tokens, vocab]` float32 logits matrix. superopt matches this form too and offers
`chunked_xent(h, w, labels, chunk=..., loss_dtype=float32)`: the same float32 loss, a chunk
of the vocabulary at a time, its gradient in bfloat16 like the original's.

Run it with `python examples/cross_entropy_bf16.py`; it prints the report and times
`jax.jit` of the original against the optimized function. `superopt bench` runs `CASE`:
256 tokens, width 256, a 32k vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, BFloat16, Int

import superopt
from superopt._measure import time_callables


def loss(
    h: BFloat16[Array, "n d"], w: BFloat16[Array, "d v"], labels: Int[Array, " n"]
) -> jax.Array:
    """Mean next-token cross-entropy of float32 logits from bfloat16 weights."""
    logits = (h @ w).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def example_args(tokens: int = 256, width: int = 256, vocab: int = 32768):
    """bfloat16 hidden states and output projection, and labels."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k1, (tokens, width)).astype(jnp.bfloat16)
    w = (jax.random.normal(k2, (width, vocab)) / width**0.5).astype(jnp.bfloat16)
    labels = jax.random.randint(k3, (tokens,), 0, vocab)
    return h, w, labels


CASE = (loss, example_args)


def main(budget_s: float = 0.5, tokens: int = 64) -> list[superopt.Optimized]:
    """Optimize the loss, check its value and gradient, and time it against `jax.jit`.

    The default is a few tokens, to run quickly; `CASE` has the benchmark's 256.
    """
    args = example_args(tokens)
    opt = superopt.optimize(loss, *args)
    print(opt.report)
    assert opt(*args).dtype == jnp.float32
    assert jnp.allclose(opt(*args), jax.jit(loss)(*args), rtol=1e-4), "optimized loss differs"
    grads = [jax.jit(jax.grad(f, (0, 1)))(*args) for f in (loss, opt)]
    for want, got in zip(*grads):
        assert got.dtype == want.dtype == jnp.bfloat16
        assert jnp.allclose(got.astype(jnp.float32), want.astype(jnp.float32), atol=2e-2)
    timings = time_callables({"jax.jit": loss, "superopt": opt}, args, budget_s=budget_s)
    base = timings["jax.jit"].median_s
    for name, t in timings.items():
        print(f"{name:>12}: {t.median_s * 1e3:8.2f} ms  ({base / t.median_s:4.2f}x)")
    return [opt]


if __name__ == "__main__":
    main(budget_s=2.0, tokens=256)
