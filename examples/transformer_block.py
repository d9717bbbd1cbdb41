"""A pre-norm transformer block: attention and an MLP, as a user writes it in plain JAX.

Layer norm, the query/key/value projections, causal multi-head attention through
`jax.nn.dot_product_attention`, an output projection, a residual, then a GELU MLP with
a second residual. There are several things superopt could rewrite here: the three
projections share their left operand (`concat_shared_lhs` makes them one matmul), the
attention can be key-tiled (`flash_attention` at several block sizes), and the scalar
factors of the norm can move. Which of them pay off depends on the sizes, and the cost
model decides; at a sequence of 512 XLA's own fusion is already good, so this case is
mostly about not making a realistic program slower.

Run it with `python examples/transformer_block.py`; `superopt bench` runs it with the
others at the sizes of `CASE`.
"""

from __future__ import annotations

import jax
import numpy as np
from jaxtyping import Array, Float

import superopt

SEQ, WIDTH, HEADS = 512, 256, 4


def block(x: Float[Array, "b t d"], p: dict[str, Array]) -> Float[Array, "b t d"]:
    """One pre-norm block: causal self-attention then a GELU MLP, both residual."""
    b, t, d = x.shape
    h = jax.nn.standardize(x, axis=-1) * p["g1"][None, None, :] + p["b1"][None, None, :]
    q, k, v = ((h @ p[name]).reshape(b, t, HEADS, d // HEADS) for name in ("wq", "wk", "wv"))
    a = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, d)
    x = x + a @ p["wo"]
    h = jax.nn.standardize(x, axis=-1) * p["g2"][None, None, :] + p["b2"][None, None, :]
    return x + jax.nn.gelu(h @ p["w1"]) @ p["w2"]


def make_args(
    seq: int = SEQ, width: int = WIDTH, batch: int = 1, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Activations `[batch, seq, width]` and the block's parameters, float32."""
    rng = np.random.default_rng(seed)

    def dense(m: int, n: int) -> np.ndarray:
        return (rng.normal(size=(m, n)) / np.sqrt(m)).astype(np.float32)

    d = width
    params = {
        "g1": np.ones(d, np.float32),
        "b1": np.zeros(d, np.float32),
        "g2": np.ones(d, np.float32),
        "b2": np.zeros(d, np.float32),
        **{name: dense(d, d) for name in ("wq", "wk", "wv", "wo")},
        "w1": dense(d, 4 * d),
        "w2": dense(4 * d, d),
    }
    return rng.normal(size=(batch, seq, d)).astype(np.float32), params


CASE = (block, make_args)


def main(budget_s: float = 0.5, seq: int = 128) -> list[superopt.Optimized]:
    """Optimize the block (small by default), time it against `jax.jit`, and print both."""
    args = make_args(seq=seq)
    opt = superopt.optimize(block, *args, budget=0)
    times = superopt.time_callables({"jit": jax.jit(block), "opt": opt}, args, budget_s=budget_s)
    speed = superopt.speedup(times["jit"], times["opt"])
    print(f"jax.jit: {times['jit'].median_s * 1e3:.3f} ms")
    print(f"superopt: {times['opt'].median_s * 1e3:.3f} ms  ({speed:.2f}x, ", end="")
    print(f"verified={opt.report.verified}, rewrites={[s.rule for s in opt.report.rewrites]})")
    return [opt]


if __name__ == "__main__":
    main(budget_s=2.0, seq=SEQ)
