"""Cross-entropy over a large vocabulary without materializing the logits.

`optax.softmax_cross_entropy_with_integer_labels(h @ w, labels)` builds the whole
`[tokens, vocab]` logits matrix, then reads it again for the max, the exponentials and
the label gather. superopt recognizes the pattern and offers `chunked_xent`: the same loss
computed over the vocabulary a chunk at a time with an online logsumexp (its gradient
recomputes each chunk, so the backward pass never stores the logits either). Each chunk
size is a separate e-node, so the cost model picks the tile. The loss against one-hot
labels, `optax.softmax_cross_entropy(h @ w, jax.nn.one_hot(labels, vocab))`, is recognized
too, and so is the mixed-precision form: bfloat16 `h` and `w`, the loss of
`(h @ w).astype(jnp.float32)`.

Run it with `python examples/cross_entropy.py`; it prints the report, then times
`jax.jit` of the original against the optimized function and against each chunk size.
`superopt bench` runs `CASE`: 256 tokens, width 256, a 32k vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

import superopt
from superopt._measure import time_callables


def loss(
    h: Float[Array, "n d"], w: Float[Array, "d v"], labels: Int[Array, " n"]
) -> Float[Array, ""]:
    """Mean next-token cross-entropy of a language-model head."""
    return optax.softmax_cross_entropy_with_integer_labels(h @ w, labels).mean()


def loss_one_hot(
    h: Float[Array, "n d"], w: Float[Array, "d v"], labels: Int[Array, " n"]
) -> Float[Array, ""]:
    """The same loss against one-hot labels (0 for a label outside the vocabulary)."""
    return optax.softmax_cross_entropy(h @ w, jax.nn.one_hot(labels, w.shape[1])).mean()


def example_args(tokens: int = 256, width: int = 256, vocab: int = 32768):
    """Hidden states, an output projection and labels."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k1, (tokens, width))
    w = jax.random.normal(k2, (width, vocab)) / width**0.5
    labels = jax.random.randint(k3, (tokens,), 0, vocab)
    return h, w, labels


CASE = (loss, example_args)


def main(budget_s: float = 0.5, tokens: int = 64) -> list[superopt.Optimized]:
    """Optimize the loss, check it, and time the original, the winner and each chunk size.

    The default is a few tokens, to run quickly; `CASE` has the benchmark's 256.
    """
    args = example_args(tokens)
    opt = superopt.optimize(loss, *args)
    print(opt.report)
    assert jnp.allclose(opt(*args), loss(*args), rtol=1e-4), "optimized loss differs"
    # Two candidates timed against jax.jit: the model's best chunk and the next.
    one_hot = superopt.optimize(loss_one_hot, *args, budget=2)
    rules = [step.rule for step in one_hot.report.rewrites] or "unchanged"
    speedup = one_hot.report.speedup
    print(f"one-hot labels: {rules}", f"{speedup:.2f}x vs jax.jit" if speedup else "")
    assert jnp.allclose(one_hot(*args), loss(*args), rtol=1e-4), "one-hot loss differs"

    fns = {"jax.jit": loss, "superopt": opt}
    for v in superopt.variants(loss, *args, limit=40):
        chunks = [n.params["chunk"] for n in v.program.nodes() if n.op == "chunked_xent"]
        if chunks and chunks[0] in (512, 2048, 4096, 8192):
            fns[f"chunk={chunks[0]}"] = v.fn
    timings = time_callables(fns, args, budget_s=budget_s)
    base = timings["jax.jit"].median_s
    for name, t in timings.items():
        print(f"{name:>12}: {t.median_s * 1e3:8.2f} ms  ({base / t.median_s:4.2f}x)")
    return [opt, one_hot]


if __name__ == "__main__":
    main(budget_s=2.0, tokens=256)
