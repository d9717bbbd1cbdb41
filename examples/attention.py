"""Attention tiled over keys: flash-style online softmax, with the block size as a choice.

`jax.nn.dot_product_attention` (XLA implementation) materializes the
`[batch, heads, queries, keys]` scores and the probabilities. superopt recognizes
`softmax(q kᵀ · scale) v` (here as `jax.nn.dot_product_attention` writes it, causal
mask included) and offers `flash_attention`: the same result computed a key block at a
time with an online softmax, its gradient recomputing each block. Every block size is a
separate e-node in one e-class; measured on CPU the tiled form wins from sequence ~2k
with blocks of 128–256 and loses at 1k, which is the cost model's call to make.

Run it with `python examples/attention.py` (sequence 4096); it prints the report, then
times `jax.jit` of the original against the optimized function and against several block
sizes. `superopt bench` runs `CASE`, also at sequence 4096.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

import superopt
from superopt._measure import time_callables

SEQ = 4096


def attention(
    q: Float[Array, "b t h d"], k: Float[Array, "b s h d"], v: Float[Array, "b s h d"]
) -> Float[Array, "b t h d"]:
    """Causal multi-head self-attention in the `[batch, seq, heads, dim]` layout."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)


def example_args(seq: int = SEQ, heads: int = 4, dim: int = 64):
    """Queries, keys and values for one sequence."""
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    shape = (1, seq, heads, dim)
    return tuple(jax.random.normal(key, shape) for key in (kq, kk, kv))


CASE = (attention, example_args)


def main(budget_s: float = 0.5, seq: int = 1024) -> list[superopt.Optimized]:
    """Optimize attention, check it, and time the original, the winner and block sizes.

    The default sequence is short, to run quickly; the tiled form pays from about 2k.
    """
    args = example_args(seq)
    opt = superopt.optimize(attention, *args)
    print(opt.report)
    assert jnp.allclose(opt(*args), attention(*args), rtol=1e-4, atol=1e-4)

    fns = {"jax.jit": attention, "superopt": opt}
    for v in superopt.variants(attention, *args, limit=40):
        blocks = [n.params["block"] for n in v.program.nodes() if n.op == "flash_attention"]
        if blocks and blocks[0] in (64, 128, 256, 512):
            fns[f"block={blocks[0]}"] = v.fn
    timings = time_callables(fns, args, budget_s=budget_s)
    base = timings["jax.jit"].median_s
    for name, t in timings.items():
        print(f"{name:>12}: {t.median_s * 1e3:8.2f} ms  ({base / t.median_s:4.2f}x)")
    return [opt]


if __name__ == "__main__":
    main(budget_s=2.0, seq=SEQ)
