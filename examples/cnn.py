"""A small CNN classifier: two convolutions, pooling, and a dense head.

The IR does not model convolutions: `conv_general_dilated` stays an opaque node that
the search routes around, lowered back to the very same lax call. The rest (bias adds,
ReLUs, the global average pool and the classifier matmul) is in the e-graph. This case
shows that a program superopt only partly understands still comes back verified and
no slower than `jax.jit`.

Run it with `python examples/cnn.py`; `superopt bench` runs it with the others at the
sizes of `CASE`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import superopt

BATCH, SIZE, CHANNELS, CLASSES = 32, 32, (3, 32, 64), 10


def _conv(x: Array, w: Array, b: Array) -> Array:
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.nn.relu(y + b[None, None, None, :])


def cnn(x: Float[Array, "n h w c"], p: dict[str, Array]) -> Float[Array, "n k"]:
    """Conv-ReLU, 2×2 average pool, conv-ReLU, global average pool, dense logits."""
    x = _conv(x, p["w1"], p["b1"])
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    x = _conv(x, p["w2"], p["b2"])
    return jnp.mean(x, axis=(1, 2)) @ p["w3"] + p["b3"][None, :]


def make_args(
    batch: int = BATCH, size: int = SIZE, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images `[batch, size, size, 3]` and the network's parameters, float32."""
    rng = np.random.default_rng(seed)
    c0, c1, c2 = CHANNELS

    def normal(*shape: int, fan_in: int) -> np.ndarray:
        return (rng.normal(size=shape) / np.sqrt(fan_in)).astype(np.float32)

    params = {
        "w1": normal(3, 3, c0, c1, fan_in=9 * c0),
        "b1": np.zeros(c1, np.float32),
        "w2": normal(3, 3, c1, c2, fan_in=9 * c1),
        "b2": np.zeros(c2, np.float32),
        "w3": normal(c2, CLASSES, fan_in=c2),
        "b3": np.zeros(CLASSES, np.float32),
    }
    return rng.normal(size=(batch, size, size, c0)).astype(np.float32), params


CASE = (cnn, make_args)


def main(budget_s: float = 0.5, batch: int = 4) -> list[superopt.Optimized]:
    """Optimize the CNN (a small batch by default), time it against `jax.jit`, print both."""
    args = make_args(batch=batch)
    opt = superopt.optimize(cnn, *args, budget=0)
    times = superopt.time_callables({"jit": jax.jit(cnn), "opt": opt}, args, budget_s=budget_s)
    speed = superopt.speedup(times["jit"], times["opt"])
    print(f"jax.jit: {times['jit'].median_s * 1e3:.3f} ms")
    print(f"superopt: {times['opt'].median_s * 1e3:.3f} ms  ({speed:.2f}x, ", end="")
    print(f"verified={opt.report.verified}, rewrites={[s.rule for s in opt.report.rewrites]})")
    return [opt]


if __name__ == "__main__":
    main(budget_s=2.0, batch=BATCH)
