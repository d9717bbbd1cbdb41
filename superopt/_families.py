"""Program families of the cost-model corpus: seeded generators of random programs, each
with its equivalent variants (hand-written rewrites of the kind the e-graph finds) and the
tile sizes of its fused ops. `superopt._corpus` measures them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .ir import Node, make


@dataclass
class Spec:
    """One random program of a family: example arguments and equivalent variants.

    **Arguments:**

    - `args`: the example arguments (numpy arrays).
    - `fns`: variant name → a JAX function of `args` (the first is the reference).
    - `fused`: variant name → a builder from the program's input nodes to output nodes,
      using a fused op whose tile parameter `tile_param` takes each of `tiles`.
    """

    args: tuple[np.ndarray, ...]
    fns: dict[str, Callable[..., Any]]
    fused: dict[str, Callable[[tuple[Node, ...], int], tuple[Node, ...]]] = field(
        default_factory=dict
    )
    tiles: tuple[int, ...] = ()


def _dtype(rng: np.random.Generator) -> Any:
    # Mostly float32; some bfloat16, whose CPU kernels differ (a real signal to learn).
    return jnp.bfloat16 if rng.random() < 0.2 else jnp.float32


def _arr(rng: np.random.Generator, shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    return np.asarray(jnp.asarray(rng.standard_normal(shape, np.float32) * 0.5, dtype))


def _pick(rng: np.random.Generator, values: Sequence[int]) -> int:
    return int(rng.choice(np.asarray(values)))


# ------------------------------------------------------------------ families
#
# Shapes are drawn so that most programs take 50 us - 50 ms a call on one CPU core: smaller
# programs measure mostly dispatch noise, bigger ones eat the collection budget.


def _mlp(rng: np.random.Generator) -> Spec:
    dt = _dtype(rng)
    b, d, h = (
        _pick(rng, [64, 128, 256, 512]),
        _pick(rng, [128, 256, 512]),
        _pick(rng, [256, 512, 1024]),
    )
    x, w1, w2 = _arr(rng, (b, d), dt), _arr(rng, (d, h), dt), _arr(rng, (h, d), dt)
    s = 0.5
    return Spec(
        (x, w1, w2),
        {
            "ref": lambda x, w1, w2: jax.nn.gelu((x @ w1) * s) @ w2,
            "scale_weight": lambda x, w1, w2: jax.nn.gelu(x @ (w1 * s)) @ w2,
            "scale_input": lambda x, w1, w2: jax.nn.gelu((x * s) @ w1) @ w2,
            "transposed": lambda x, w1, w2: (w2.T @ jax.nn.gelu((w1.T * s) @ x.T)).T,
            "f32_acc": lambda x, w1, w2: (
                jax.nn.gelu(jnp.dot(x, w1, preferred_element_type=jnp.float32) * s).astype(x.dtype)
                @ w2
            ),
        },
    )


def _attention_naive(q, k, v, causal=False):
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1]).astype(np.float32)
    if causal:
        t, s = scores.shape[-2:]
        mask = jnp.arange(t)[:, None] >= jnp.arange(s)[None, :]
        scores = jnp.where(mask, scores, -1e30)
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, -1).astype(v.dtype), v)


def _attention_manual(q, k, v, causal=False):
    # Softmax by hand, the scale folded into q: the same value, different ops.
    q = q * (1.0 / np.sqrt(q.shape[-1])).astype(np.float32)
    scores = jnp.einsum("bthd,bshd->bhts", q, k)
    if causal:
        t, s = scores.shape[-2:]
        scores = jnp.where(jnp.tril(jnp.ones((t, s), bool)), scores, -1e30)
    e = jnp.exp(scores - scores.max(-1, keepdims=True))
    return jnp.einsum("bhts,bshd->bthd", e / e.sum(-1, keepdims=True), v)


def _tiles(
    rng: np.random.Generator, dim: int, choices: Sequence[int], count: int
) -> tuple[int, ...]:
    """`count` tile sizes of `choices` that fit `dim` (the smallest and largest kept)."""
    fit = sorted({c for c in choices if c <= dim})
    if len(fit) <= count:
        return tuple(fit)
    inner = rng.choice(np.asarray(fit[1:-1]), count - 2, replace=False)
    return tuple(sorted({fit[0], fit[-1], *(int(c) for c in inner)}))


_BLOCKS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 3072, 4096)
_CHUNKS = (128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 16384, 32768)


def _attention_spec(
    rng: np.random.Generator, causal: bool, cross: bool, long: bool = False, decode: bool = False
) -> Spec:
    d = _pick(rng, [32, 64])
    if decode:
        # A few new queries per sequence against a long key/value cache, as in
        # autoregressive decoding: bandwidth-bound (each call reads all of k and v), with
        # k (b·h·s·d, at most 4M elements: 16 MiB) from well inside the CPU caches to past them.
        t, s = _pick(rng, [1, 4, 8, 16, 32]), _pick(rng, [1024, 2048, 4096, 8192])
        bh = [(b, h) for b in (1, 2, 4, 8) for h in (2, 4, 8) if b * h * s * d <= 1 << 22]
        b, h = bh[int(rng.integers(len(bh)))]
    elif long:
        # Long sequences, where the [T, S] scores no longer fit any cache: one sequence,
        # few heads (a naive call takes 0.1-0.5 s).
        s = t = _pick(rng, [2048, 3072, 4096])
        b, h = 1, _pick(rng, [1, 2, 4])
    else:
        s = _pick(rng, [512, 1024, 2048]) if cross else _pick(rng, [256, 512, 1024])
        t = _pick(rng, [64, 128, 256]) if cross else s
        # The naive forms cost b·h·t·s·d: keep a call under ~30 ms on one core.
        b, h = (1, 2) if t * s >= 1 << 20 else (_pick(rng, [1, 2]), _pick(rng, [2, 4]))
    q = _arr(rng, (b, t, h, d))
    k, v = _arr(rng, (b, s, h, d)), _arr(rng, (b, s, h, d))
    scale = 1.0 / float(np.sqrt(d))

    def fused(ins: tuple[Node, ...], block: int) -> tuple[Node, ...]:
        return (make("flash_attention", *ins, block=block, scale=scale, causal=causal,
                     mask_value=-1e30),)  # fmt: skip

    return Spec(
        (q, k, v),
        {
            "ref": lambda q, k, v: _attention_naive(q, k, v, causal),
            "manual": lambda q, k, v: _attention_manual(q, k, v, causal),
            "library": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal),
        },
        {"flash": fused},
        _tiles(rng, s, _BLOCKS, 7),
    )


def _attention(rng: np.random.Generator) -> Spec:
    return _attention_spec(rng, causal=False, cross=False)


def _causal_attention(rng: np.random.Generator) -> Spec:
    return _attention_spec(rng, causal=True, cross=False)


def _cross_attention(rng: np.random.Generator) -> Spec:
    return _attention_spec(rng, causal=False, cross=True)


def _long_attention(rng: np.random.Generator) -> Spec:
    return _attention_spec(rng, causal=bool(rng.random() < 0.5), cross=False, long=True)


def _decode_attention(rng: np.random.Generator) -> Spec:
    return _attention_spec(rng, causal=False, cross=True, decode=True)


def _transformer(rng: np.random.Generator) -> Spec:
    b, t, h, d = 1, _pick(rng, [64, 128, 256]), _pick(rng, [2, 4]), _pick(rng, [32, 64])
    m = h * d
    x = _arr(rng, (b, t, m))
    wqkv, wo = _arr(rng, (m, 3 * m)), _arr(rng, (m, m))
    w1, w2 = _arr(rng, (m, 4 * m)), _arr(rng, (4 * m, m))

    def layer(x, wqkv, wo, w1, w2, fused_qkv=True, norm=jax.nn.standardize, attn=_attention_naive):
        y = norm(x, axis=-1)
        if fused_qkv:
            q, k, v = jnp.split(y @ wqkv, 3, axis=-1)
        else:
            q, k, v = (y @ wqkv[:, i * m : (i + 1) * m] for i in range(3))
        q, k, v = (z.reshape(b, t, h, d) for z in (q, k, v))
        x = x + attn(q, k, v).reshape(b, t, m) @ wo
        return x + jax.nn.gelu(norm(x, axis=-1) @ w1) @ w2

    def manual_norm(x, axis):
        mu = x.mean(axis, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(((x - mu) ** 2).mean(axis, keepdims=True) + 1e-5)

    return Spec(
        (x, wqkv, wo, w1, w2),
        {
            "ref": layer,
            "split_qkv": lambda *a: layer(*a, fused_qkv=False),
            "manual_norm": lambda *a: layer(*a, norm=manual_norm),
            "manual_attn": lambda *a: layer(*a, attn=_attention_manual),
            "library_attn": lambda *a: layer(*a, attn=jax.nn.dot_product_attention),
            "split_manual": lambda *a: layer(*a, fused_qkv=False, norm=manual_norm),
        },
    )


def _xent_spec(rng: np.random.Generator, bias: bool, pow2: bool = False) -> Spec:
    n, d = _pick(rng, [64, 128, 256, 512]), _pick(rng, [64, 128, 256])
    if pow2:
        # Vocabularies that are powers of two, where the large chunks divide the
        # vocabulary (no partial last chunk): 32768 and 65536 are common in language models.
        vocab = _pick(rng, [32768, 65536])
    else:
        vocab = _pick(rng, [4096, 8192, 16384, 32000, 50257])
    h, w = _arr(rng, (n, d)), _arr(rng, (d, vocab))
    bb = _arr(rng, (vocab,))
    labels = rng.integers(0, vocab, n).astype(np.int32)

    def logits_of(h, w, b):
        return h @ w + b[None, :] if bias else h @ w

    def ref(h, w, labels, b):
        logits = logits_of(h, w, b)
        return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[:, None], 1)[:, 0]

    def onehot(h, w, labels, b):
        return -(jax.nn.log_softmax(logits_of(h, w, b), -1) * jax.nn.one_hot(labels, vocab)).sum(-1)

    def manual(h, w, labels, b):
        logits = logits_of(h, w, b)
        m = jax.lax.stop_gradient(logits.max(-1, keepdims=True))
        lse = jnp.log(jnp.exp(logits - m).sum(-1)) + m[:, 0]
        return lse - logits[jnp.arange(logits.shape[0]), labels]

    def optax_like(h, w, labels, b):
        logits = logits_of(h, w, b)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], 1)[:, 0]

    def fused(ins: tuple[Node, ...], chunk: int) -> tuple[Node, ...]:
        args = ins if bias else ins[:3]
        return (make("chunked_xent", *args, chunk=chunk),)

    return Spec(
        (h, w, labels, bb),
        {"ref": ref, "onehot": onehot, "manual": manual, "optax_like": optax_like},
        {"chunked": fused},
        _tiles(rng, vocab, _CHUNKS, 7),
    )


def _xent(rng: np.random.Generator) -> Spec:
    return _xent_spec(rng, bias=False)


def _xent_bias(rng: np.random.Generator) -> Spec:
    return _xent_spec(rng, bias=True)


def _xent_pow2(rng: np.random.Generator) -> Spec:
    return _xent_spec(rng, bias=False, pow2=True)


def _matrix_chain(rng: np.random.Generator) -> Spec:
    dims = [_pick(rng, [16, 64, 128, 256, 512, 1024]) for _ in range(5)]
    a, b, c, d = (_arr(rng, (dims[i], dims[i + 1])) for i in range(4))
    return Spec(
        (a, b, c, d),
        {
            "ref": lambda a, b, c, d: ((a @ b) @ c) @ d,
            "right": lambda a, b, c, d: a @ (b @ (c @ d)),
            "middle": lambda a, b, c, d: (a @ b) @ (c @ d),
            "inner_left": lambda a, b, c, d: (a @ (b @ c)) @ d,
            "inner_right": lambda a, b, c, d: a @ ((b @ c) @ d),
            "transposed": lambda a, b, c, d: (d.T @ (c.T @ (b.T @ a.T))).T,
        },
    )


def _normalization(rng: np.random.Generator) -> Spec:
    dt = _dtype(rng)
    n, d = _pick(rng, [256, 1024, 4096, 8192]), _pick(rng, [128, 256, 1024])
    x, g = _arr(rng, (n, d), dt), _arr(rng, (1, d), dt)

    def two_pass(x, g):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * g

    def one_pass(x, g):
        mu = x.mean(-1, keepdims=True)
        var = (x * x).mean(-1, keepdims=True) - mu * mu
        return (x - mu) * jax.lax.rsqrt(var + 1e-5) * g

    def divide(x, g):
        mu = x.mean(-1, keepdims=True)
        return g * (x - mu) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)

    def f32(x, g):
        return two_pass(x.astype(jnp.float32), g.astype(jnp.float32)).astype(x.dtype)

    return Spec(
        (x, g),
        {
            "ref": two_pass,
            "one_pass": one_pass,
            "library": lambda x, g: jax.nn.standardize(x, axis=-1, epsilon=1e-5) * g,
            "divide": divide,
            "f32": f32,
        },
    )


def _conv(rng: np.random.Generator) -> Spec:
    b, c, s = _pick(rng, [1, 4]), _pick(rng, [8, 16, 32]), _pick(rng, [32, 64])
    x = _arr(rng, (b, c, s, s))
    k1, k2 = _arr(rng, (c, c, 3, 3)), _arr(rng, (c, c, 3, 3))

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME")

    def nhwc(x, k):
        y = jax.lax.conv_general_dilated(
            x.transpose(0, 2, 3, 1), k.transpose(2, 3, 1, 0), (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        return y.transpose(0, 3, 1, 2)

    return Spec(
        (x, k1, k2),
        {
            "ref": lambda x, k1, k2: conv(jax.nn.relu(conv(x, k1)), k2),
            "scaled": lambda x, k1, k2: conv(jax.nn.relu(conv(x * 2.0, k1 * 0.5)), k2),
            "nhwc": lambda x, k1, k2: nhwc(jax.nn.relu(nhwc(x, k1)), k2),
            "maximum": lambda x, k1, k2: conv(jnp.maximum(conv(x, k1), 0.0), k2),
        },
    )


def _reduction(rng: np.random.Generator) -> Spec:
    n, k, m = (_pick(rng, [128, 256, 1024, 2048]) for _ in range(3))
    a, b = _arr(rng, (n, k)), _arr(rng, (k, m))
    return Spec(
        (a, b),
        {
            "ref": lambda a, b: (a @ b).sum(0),
            "pushed": lambda a, b: a.sum(0) @ b,
            "einsum": lambda a, b: jnp.einsum("nk,km->m", a, b),
            "ones": lambda a, b: (jnp.ones((1, a.shape[0]), a.dtype) @ (a @ b))[0],
            "transposed": lambda a, b: (b.T @ a.T).sum(1),
        },
    )


def _elementwise(rng: np.random.Generator) -> Spec:
    dt = _dtype(rng)
    n = _pick(rng, [1 << 16, 1 << 18, 1 << 20, 1 << 22])
    x, y = _arr(rng, (n,), dt), _arr(rng, (n,), dt)
    return Spec(
        (x, y),
        {
            "ref": lambda x, y: jnp.tanh(x * y + x) * jnp.exp(-y * y),
            "factored": lambda x, y: jnp.tanh(x * (y + 1)) * jnp.exp(-y * y),
            "sigmoid": lambda x, y: (2 * jax.nn.sigmoid(2 * x * (y + 1)) - 1) * jnp.exp(-y * y),
            "exp_tanh": lambda x, y: (
                ((1 - jnp.exp(-2 * x * (y + 1))) / (1 + jnp.exp(-2 * x * (y + 1))))
                * jnp.exp(-y * y)
            ),
            "square": lambda x, y: jnp.tanh(x * y + x) * jnp.exp(-jnp.square(y)),
        },
    )


def _recurrent(rng: np.random.Generator) -> Spec:
    b, d = _pick(rng, [32, 128, 512]), _pick(rng, [128, 256, 512])
    x, hid = _arr(rng, (b, d)), _arr(rng, (b, d))
    wx, wh = _arr(rng, (d, 4 * d)), _arr(rng, (d, 4 * d))

    def cell(gates, c):
        i, f, g, o = jnp.split(gates, 4, -1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c)

    def per_gate(x, h, wx, wh):
        gates = [x @ wx[:, j * d : (j + 1) * d] + h @ wh[:, j * d : (j + 1) * d] for j in range(4)]
        return cell(jnp.concatenate(gates, -1), h)

    return Spec(
        (x, hid, wx, wh),
        {
            "ref": lambda x, h, wx, wh: cell(x @ wx + h @ wh, h),
            "concat": lambda x, h, wx, wh: cell(
                jnp.concatenate([x, h], -1) @ jnp.concatenate([wx, wh], 0), h
            ),
            "per_gate": per_gate,
            "stacked": lambda x, h, wx, wh: cell(
                jnp.einsum("sbd,sdg->bg", jnp.stack([x, h]), jnp.stack([wx, wh])), h
            ),
        },
    )


def _chain5(rng: np.random.Generator) -> Spec:
    import itertools

    dims = [_pick(rng, [16, 64, 128, 256, 512, 1024]) for _ in range(6)]
    mats = tuple(_arr(rng, (dims[i], dims[i + 1])) for i in range(5))

    def orders(lo: int, hi: int) -> list[Callable[[tuple[Any, ...]], Any]]:
        # Every parenthesization of mats[lo:hi] (the Catalan number of them: 14 for five).
        if hi - lo == 1:
            return [lambda ms, i=lo: ms[i]]
        out = []
        for mid in range(lo + 1, hi):
            for left, right in itertools.product(orders(lo, mid), orders(mid, hi)):
                out.append(lambda ms, left=left, right=right: left(ms) @ right(ms))
        return out

    fns = {f"order{i}": (lambda *ms, f=f: f(ms)) for i, f in enumerate(orders(0, 5))}
    return Spec(mats, fns)


def _shared_operand(rng: np.random.Generator) -> Spec:
    n, k, m = (_pick(rng, [64, 256, 512, 1024]) for _ in range(3))
    dt = _dtype(rng)
    a, b, c = _arr(rng, (n, k), dt), _arr(rng, (k, m), dt), _arr(rng, (k, m), dt)
    s = 0.25
    return Spec(
        (a, b, c),
        {
            "ref": lambda a, b, c: s * (a @ b) + s * (a @ c),
            "factored": lambda a, b, c: s * (a @ (b + c)),
            "scale_left": lambda a, b, c: (s * a) @ (b + c),
            "scale_right": lambda a, b, c: a @ (s * (b + c)),
            "scale_each": lambda a, b, c: a @ (s * b) + a @ (s * c),
            "stacked": lambda a, b, c: s * jnp.einsum("nk,skm->nm", a, jnp.stack([b, c])),
            "concat": lambda a, b, c: s * (a @ jnp.concatenate([b, c], 1)).reshape(n, 2, m).sum(1),
        },
    )


def _softmax(rng: np.random.Generator) -> Spec:
    # Row-wise softmax from small rows to arrays larger than the caches (up to 32 MiB in
    # float32): bandwidth-bound reductions over an axis, broadcast back.
    dt = _dtype(rng)
    n = _pick(rng, [128, 512, 2048, 8192])
    d = _pick(rng, [w for w in (64, 512, 2048, 4096) if n * w <= 1 << 23])
    x = _arr(rng, (n, d), dt) * 4

    def manual(x):
        e = jnp.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def reciprocal(x):
        e = jnp.exp(x - x.max(-1, keepdims=True))
        return e * (1 / e.sum(-1, keepdims=True))

    return Spec(
        (x,),
        {
            "ref": lambda x: jax.nn.softmax(x, axis=-1),
            "manual": manual,
            "reciprocal": reciprocal,
            "logsumexp": lambda x: jnp.exp(x - jax.nn.logsumexp(x, -1, keepdims=True)),
            "log_softmax": lambda x: jnp.exp(jax.nn.log_softmax(x, axis=-1)),
            # Without the max shift: exact enough for inputs of a few units (these are
            # normal with standard deviation 2), and what many write.
            "unshifted": lambda x: jnp.exp(x) / jnp.exp(x).sum(-1, keepdims=True),
            "f32": lambda x: manual(x.astype(jnp.float32)).astype(x.dtype),
        },
    )


FAMILIES: dict[str, Callable[[np.random.Generator], Spec]] = {
    "mlp": _mlp,
    "attention": _attention,
    "causal_attention": _causal_attention,
    "cross_attention": _cross_attention,
    "transformer": _transformer,
    "xent": _xent,
    "xent_bias": _xent_bias,
    "matrix_chain": _matrix_chain,
    "normalization": _normalization,
    "conv": _conv,
    "reduction": _reduction,
    "elementwise": _elementwise,
    "recurrent": _recurrent,
    # Appended, not inserted: a program's id and seed depend on its family's position.
    "chain5": _chain5,
    "shared_operand": _shared_operand,
    "long_attention": _long_attention,
    "xent_pow2": _xent_pow2,
    "softmax": _softmax,
    "decode_attention": _decode_attention,
}
