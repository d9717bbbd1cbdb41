"""Fused ops: producer–consumer chains computed in tiles, never materializing the big middle.

- `chunked_xent(h, w, labels[, b]; chunk[, loss_dtype])`: softmax cross-entropy of
  `h @ w (+ b)` per row, over the vocabulary in chunks with an online logsumexp; the
  `[N, V]` logits never exist. `loss_dtype` (float32 for bfloat16 `h`) is the loss of
  logits upcast before the softmax, as mixed-precision training computes it.
- `flash_attention(q, k, v[, mask]; block, scale, causal, mask_value)`: `softmax(q kᵀ·scale) v`
  in the `[B, T, H, D]` layout of `jax.nn.dot_product_attention`, blockwise over keys with an
  online softmax; the `[B, H, T, S]` scores never exist.

Both lower to a `lax.scan` over full tiles plus one smaller tail tile when the dimension is
not a multiple of the tile (no padding, no masking, no copy of the weights). Both carry a
`jax.custom_vjp` whose backward recomputes each tile (FlashAttention-2 style), so the
gradient is exact and also never stores the big intermediate. Arithmetic inside is float32
whatever the input dtype; results are cast back to the input dtype, or to `chunked_xent`'s
`loss_dtype`.

Costs count what a tiled loop really moves: every tile re-reads the operand it is not
tiled over (`h`, `q` and the running accumulators), and a tile's scores only go to memory
when they do not fit in `ON_CHIP_BYTES`. So small tiles pay re-reads, large tiles pay
spills, and tile-size selection is a real trade-off for a cost model.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from ._errors import ShapeError
from ._node import Node, Params
from ._ops import dtype_src
from ._registry import Cost, OpDef, register_op

# Bytes of fast memory a tile's intermediate may use before it spills (a large last-level
# cache or an accelerator's L2/VMEM; a documented guess, the learned model corrects it).
ON_CHIP_BYTES = 16 * 2**20

# `jax.nn.dot_product_attention` fills masked scores with this (finite, so a fully masked
# row becomes a uniform softmax rather than NaN).
LARGE_NEGATIVE = float(-0.7 * np.finfo(np.float32).max)


def _tiles(n: int, tile: int) -> tuple[int, int]:
    """Number of full tiles and the size of the tail tile (0 if none)."""
    return n // tile, n % tile


# ---------------------------------------------------------------- chunked cross-entropy


def _xent_logits(h, w, b, start: Any, size: int):
    wc = lax.dynamic_slice_in_dim(w, start, size, axis=1)
    logits = lax.dot_general(h, wc, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    if b is not None:
        logits = logits + lax.dynamic_slice_in_dim(b, start, size).astype(jnp.float32)[None, :]
    return logits, wc


def _xent_scan(body, carry, n_full: int, tail: int, chunk: int):
    """Run `body(carry, start, size)` over the full chunks, then the tail chunk."""
    if n_full:

        def step(c, i):
            return body(c, i * chunk, chunk), None

        carry, _ = lax.scan(step, carry, jnp.arange(n_full, dtype=jnp.int32))
    if tail:
        carry = body(carry, n_full * chunk, tail)
    return carry


def _xent_forward(h, w, labels, b, chunk):
    n, vocab = h.shape[0], w.shape[1]
    n_full, tail = _tiles(vocab, chunk)

    def body(carry, start, size):
        m, s, picked = carry
        logits, _ = _xent_logits(h, w, b, start, size)
        m_new = jnp.maximum(m, jnp.max(logits, axis=1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(logits - m_new[:, None]), axis=1)
        local = labels - start
        inside = (local >= 0) & (local < size)
        here = jnp.take_along_axis(logits, jnp.clip(local, 0, size - 1)[:, None], axis=1)[:, 0]
        return m_new, s, jnp.where(inside, here, picked)

    init = (
        jnp.full((n,), -jnp.inf, jnp.float32),
        jnp.zeros((n,), jnp.float32),
        jnp.zeros((n,), jnp.float32),
    )
    m, s, picked = _xent_scan(body, init, n_full, tail, chunk)
    lse = m + jnp.log(s)
    return lse - picked, lse


def _wrap_labels(labels, vocab: int):
    # Negative labels count from the end, as `take_along_axis` in the reference does.
    labels = labels.astype(jnp.int32)
    return jnp.where(labels < 0, labels + vocab, labels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _xent(h, w, labels, b, chunk, loss_dtype):
    loss, _ = _xent_forward(h, w, labels, b, chunk)
    return loss.astype(loss_dtype)


def _xent_fwd(h, w, labels, b, chunk, loss_dtype):
    loss, lse = _xent_forward(h, w, labels, b, chunk)
    return loss.astype(loss_dtype), (h, w, labels, b, lse)


def _xent_bwd(chunk, loss_dtype, res, g):
    h, w, labels, b, lse = res
    vocab = w.shape[1]
    n_full, tail = _tiles(vocab, chunk)
    g = g.astype(jnp.float32)

    def body(carry, start, size):
        dh, dw, db = carry
        logits, wc = _xent_logits(h, w, b, start, size)
        onehot = (labels - start)[:, None] == jnp.arange(size, dtype=jnp.int32)[None, :]
        dl = (jnp.exp(logits - lse[:, None]) - onehot) * g[:, None]
        dh = dh + lax.dot_general(
            dl, wc, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
        )
        dwc = lax.dot_general(h, dl, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        dw = lax.dynamic_update_slice_in_dim(dw, dwc.astype(dw.dtype), start, axis=1)
        if db is not None:
            db = lax.dynamic_update_slice_in_dim(db, jnp.sum(dl, 0).astype(db.dtype), start, 0)
        return dh, dw, db

    init = (
        jnp.zeros(h.shape, jnp.float32),
        jnp.zeros(w.shape, w.dtype),
        None if b is None else jnp.zeros(b.shape, b.dtype),
    )
    dh, dw, db = _xent_scan(body, init, n_full, tail, chunk)
    return dh.astype(h.dtype), dw, None, db


_xent.defvjp(_xent_fwd, _xent_bwd)


def chunked_xent(
    h: Float[Array, "n d"],
    w: Float[Array, "d v"],
    labels: Int[Array, " n"],
    b: Float[Array, " v"] | None = None,
    *,
    chunk: int,
    loss_dtype: Any = None,
) -> Float[Array, " n"]:
    """Softmax cross-entropy of the logits `h @ w (+ b)` against integer `labels`, per row.

    Equal to `optax.softmax_cross_entropy_with_integer_labels(h @ w + b, labels)`, computed
    over the vocabulary `chunk` columns at a time; a vocabulary that is not a multiple of
    `chunk` ends with one smaller chunk. With `loss_dtype`, equal to the loss of the logits
    upcast first, `(h @ w).astype(loss_dtype) + b` (`b` of either dtype), as
    mixed-precision training computes it: XLA folds that upcast into the product, whose
    float32 accumulation is never rounded to `h`'s dtype, and neither is the fused op's.

    **Arguments:**

    - `h`: hidden states `[N, D]`.
    - `w`: output projection `[D, V]`.
    - `labels`: integer class per row, in `[-V, V)` (negative counts from the end).
    - `b`: optional bias `[V]`.
    - `chunk`: vocabulary columns per step, `1 <= chunk`.
    - `loss_dtype`: the dtype of the loss (default: that of `h`).

    **Returns:** the loss per row `[N]`, in `loss_dtype`.
    """
    if chunk < 1:
        raise ShapeError(f"chunked_xent needs chunk >= 1, got {chunk}")
    out = jnp.dtype(h.dtype if loss_dtype is None else loss_dtype)
    return _xent(h, w, _wrap_labels(labels, w.shape[1]), b, min(int(chunk), w.shape[1]), out)


def _xent_type(args: Sequence[Node], p: Params):
    if len(args) not in (3, 4):
        raise ShapeError(f"chunked_xent takes h, w, labels and an optional bias, got {len(args)}")
    h, w, labels = args[:3]
    ok = h.ndim == 2 and w.ndim == 2 and labels.shape == (h.shape[0],) and h.shape[1] == w.shape[0]
    out = np.dtype(h.dtype if p.get("loss_dtype") is None else p["loss_dtype"])
    if ok and len(args) == 4:
        ok = args[3].shape == (w.shape[1],) and args[3].dtype in (h.dtype, out)
    if not ok or not np.issubdtype(labels.dtype, np.integer) or h.dtype != w.dtype:
        raise ShapeError(
            "chunked_xent needs h[N,D], w[D,V] of one dtype, integer labels[N] and "
            f"bias[V]; got {[(a.shape, a.dtype) for a in args]}"
        )
    if not jnp.issubdtype(out, jnp.floating):
        raise ShapeError(f"chunked_xent needs a float loss_dtype, got {out}")
    if p["chunk"] < 1:
        raise ShapeError(f"chunked_xent needs chunk >= 1, got {p['chunk']}")
    return (h.shape[0],), out


def _xent_cost(node: Node) -> Cost:
    h, w = node.args[0], node.args[1]
    (n, d), vocab = h.shape, w.shape[1]
    chunk = min(node.params["chunk"], vocab)
    steps = -(-vocab // chunk)
    # Per logit: the matmul, subtract, exp, sum, running max, and the label compare.
    flops = 2.0 * n * d * vocab + 5.0 * n * vocab
    tile_bytes = 4.0 * n * chunk
    spill = 2.0 * tile_bytes * steps if tile_bytes > ON_CHIP_BYTES else 0.0
    # h and the three running [N] accumulators are re-read every step; w is read once.
    read = h.nbytes * steps + w.nbytes + node.args[2].nbytes + 12.0 * n * steps
    read += sum(a.nbytes for a in node.args[3:])
    return Cost(
        flops,
        float(n * vocab + n),
        read + spill / 2,
        node.nbytes + spill / 2,
        steps,
        tile_bytes,
        (vocab % chunk) / chunk,
    )


def _render(name: str):
    def render(args: Sequence[str], p: Params) -> str:
        kw = ", ".join(f"{k}={_param_src(v)}" for k, v in p.items())
        return f"fused.{name}({', '.join(args)}, {kw})"

    return render


def _param_src(value: Any) -> str:
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, np.dtype):
        return dtype_src(value)
    return repr(value)


register_op(
    OpDef(
        "chunked_xent",
        "fused",
        lambda *xs, chunk, loss_dtype=None: chunked_xent(*xs, chunk=chunk, loss_dtype=loss_dtype),
        _render("chunked_xent"),
        _xent_cost,
        type_rule=_xent_type,
    )
)

# ---------------------------------------------------------------- flash attention


def _attn_scores(q, kb, start, size, mask, scale, causal, mask_value):
    """Scores `[B, H, T, size]` of the key block at `start`, masked; and the mask used."""
    s = jnp.einsum("bthd,bshd->bhts", q, kb, preferred_element_type=jnp.float32) * scale
    keep = None
    if causal:
        t = q.shape[1]
        rows = lax.broadcasted_iota(jnp.int32, (t, size), 0)
        cols = lax.broadcasted_iota(jnp.int32, (t, size), 1) + start
        keep = (rows >= cols)[None, None]
    if mask is not None:
        mb = lax.dynamic_slice_in_dim(mask, start, size, axis=3)
        keep = mb if keep is None else keep & mb
    if keep is not None:
        s = jnp.where(keep, s, jnp.float32(mask_value))
    return s, keep


def _attn_scan(body, carry, n_full, tail, block):
    if n_full:

        def step(c, i):
            return body(c, i * block, block), None

        carry, _ = lax.scan(step, carry, jnp.arange(n_full, dtype=jnp.int32))
    if tail:
        carry = body(carry, n_full * block, tail)
    return carry


def _attn_forward(q, k, v, mask, block, scale, causal, mask_value):
    b, t, h, _ = q.shape
    n_full, tail = _tiles(k.shape[1], block)

    def body(carry, start, size):
        m, denom, acc = carry
        kb = lax.dynamic_slice_in_dim(k, start, size, axis=1)
        vb = lax.dynamic_slice_in_dim(v, start, size, axis=1)
        s, _ = _attn_scores(q, kb, start, size, mask, scale, causal, mask_value)
        m_new = jnp.maximum(m, jnp.max(s, axis=3))
        p = jnp.exp(s - m_new[..., None])
        corr = jnp.exp(m - m_new)
        denom = denom * corr + jnp.sum(p, axis=3)
        pv = jnp.einsum("bhts,bshd->bthd", p, vb.astype(jnp.float32))
        acc = acc * jnp.transpose(corr, (0, 2, 1))[..., None] + pv
        return m_new, denom, acc

    init = (
        jnp.full((b, h, t), -jnp.inf, jnp.float32),
        jnp.zeros((b, h, t), jnp.float32),
        jnp.zeros((b, t, h, v.shape[3]), jnp.float32),
    )
    m, denom, acc = _attn_scan(body, init, n_full, tail, block)
    out = acc / jnp.transpose(denom, (0, 2, 1))[..., None]
    return out, (m, denom)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _attn(q, k, v, mask, block, scale, causal, mask_value):
    out, _ = _attn_forward(q, k, v, mask, block, scale, causal, mask_value)
    return out.astype(q.dtype)


def _attn_fwd(q, k, v, mask, block, scale, causal, mask_value):
    out, (m, denom) = _attn_forward(q, k, v, mask, block, scale, causal, mask_value)
    out = out.astype(q.dtype)
    return out, (q, k, v, mask, out, m, denom)


def _attn_bwd(block, scale, causal, mask_value, res, g):
    q, k, v, mask, out, m, denom = res
    n_full, tail = _tiles(k.shape[1], block)
    g = g.astype(jnp.float32)
    delta = jnp.einsum("bthd,bthd->bht", g, out.astype(jnp.float32))

    def body(carry, start, size):
        dq, dk, dv = carry
        kb = lax.dynamic_slice_in_dim(k, start, size, axis=1)
        vb = lax.dynamic_slice_in_dim(v, start, size, axis=1)
        s, keep = _attn_scores(q, kb, start, size, mask, scale, causal, mask_value)
        # The row max and the sum apart, not as m + log(sum): in a fully masked row m is
        # the fill (-2.4e38), and adding log(sum) to it rounds to m itself.
        p = jnp.exp(s - m[..., None]) / denom[..., None]
        dvb = jnp.einsum("bhts,bthd->bshd", p, g)
        dp = jnp.einsum("bthd,bshd->bhts", g, vb.astype(jnp.float32))
        ds = p * (dp - delta[..., None])
        if keep is not None:
            # Masked scores are a constant fill: no gradient flows through them.
            ds = jnp.where(keep, ds, 0.0)
        dq = dq + jnp.einsum("bhts,bshd->bthd", ds, kb.astype(jnp.float32)) * scale
        dkb = jnp.einsum("bhts,bthd->bshd", ds, q.astype(jnp.float32)) * scale
        dk = lax.dynamic_update_slice_in_dim(dk, dkb.astype(dk.dtype), start, axis=1)
        dv = lax.dynamic_update_slice_in_dim(dv, dvb.astype(dv.dtype), start, axis=1)
        return dq, dk, dv

    init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros_like(k), jnp.zeros_like(v))
    dq, dk, dv = _attn_scan(body, init, n_full, tail, block)
    return dq.astype(q.dtype), dk, dv, None


_attn.defvjp(_attn_fwd, _attn_bwd)


def flash_attention(
    q: Float[Array, "b t h d"],
    k: Float[Array, "b s h d"],
    v: Float[Array, "b s h e"],
    mask: Bool[Array, "b h t s"] | None = None,
    *,
    block: int,
    scale: float | None = None,
    causal: bool = False,
    mask_value: float = LARGE_NEGATIVE,
) -> Float[Array, "b t h e"]:
    """Attention `softmax(q kᵀ · scale) v`, blockwise over keys with an online softmax.

    Equal to `jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
    is_causal=causal)` (XLA implementation), computed `block` keys at a time; a key length
    that is not a multiple of `block` ends with one smaller block.

    **Arguments:**

    - `q`: queries `[B, T, H, D]`.
    - `k`: keys `[B, S, H, D]`.
    - `v`: values `[B, S, H, E]`.
    - `mask`: optional boolean mask broadcastable to `[B, H, T, S]` (`True` keeps a score).
    - `block`: keys per step, `>= 1`.
    - `scale`: the score scale; `None` means `1/sqrt(D)`.
    - `causal`: keep only keys at or before the query position (top-left aligned).
    - `mask_value`: what a masked score becomes before the softmax.

    **Returns:** `[B, T, H, E]` in the dtype of `q`.
    """
    if block < 1:
        raise ShapeError(f"flash_attention needs block >= 1, got {block}")
    if scale is None:
        scale = 1.0 / float(np.sqrt(q.shape[3]))
    if mask is not None:
        mask = jnp.broadcast_to(mask, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
    block = min(int(block), k.shape[1])
    return _attn(q, k, v, mask, block, float(scale), bool(causal), float(mask_value))


def _attn_type(args: Sequence[Node], p: Params):
    if len(args) not in (3, 4):
        raise ShapeError(f"flash_attention takes q, k, v and an optional mask, got {len(args)}")
    q, k, v = args[:3]
    ok = q.ndim == k.ndim == v.ndim == 4 and q.dtype == k.dtype == v.dtype
    ok = ok and q.shape[0] == k.shape[0] == v.shape[0] and k.shape[1] == v.shape[1]
    ok = ok and q.shape[2] == k.shape[2] == v.shape[2] and q.shape[3] == k.shape[3]
    if ok and len(args) == 4:
        m = args[3]
        want = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        ok = m.dtype == np.dtype(bool) and m.ndim == 4
        ok = ok and all(d in (1, w) for d, w in zip(m.shape, want))
    if not ok:
        raise ShapeError(
            "flash_attention needs q[B,T,H,D], k[B,S,H,D], v[B,S,H,E] of one dtype and a "
            f"boolean mask[B,H,T,S]; got {[(a.shape, a.dtype) for a in args]}"
        )
    if p["block"] < 1:
        raise ShapeError(f"flash_attention needs block >= 1, got {p['block']}")
    return (q.shape[0], q.shape[1], q.shape[2], v.shape[3]), q.dtype


def _attn_cost(node: Node) -> Cost:
    q, k, v = node.args[:3]
    b, t, h, d = q.shape
    s, e = k.shape[1], v.shape[3]
    block = min(node.params["block"], s)
    steps = -(-s // block)
    scores = float(b * h * t * s)
    # Two matmuls per score, plus scale, mask, max, subtract, exp and sum.
    flops = 2.0 * scores * (d + e) + 6.0 * scores
    tile_bytes = 4.0 * b * h * t * block
    spill = 2.0 * tile_bytes * steps if tile_bytes > ON_CHIP_BYTES else 0.0
    # q and the float32 accumulator (read and rewritten) are touched every step.
    acc = 4.0 * b * t * h * (e + 2)
    read = q.nbytes * steps + k.nbytes + v.nbytes + acc * steps
    read += sum(a.nbytes for a in node.args[3:])
    write = node.nbytes + acc * steps + spill / 2
    return Cost(flops, scores, read + spill / 2, write, steps, tile_bytes, (s % block) / block)


register_op(
    OpDef(
        "flash_attention",
        "fused",
        lambda *xs, block, scale, causal, mask_value: flash_attention(
            *xs, block=block, scale=scale, causal=causal, mask_value=mask_value
        ),
        _render("flash_attention"),
        _attn_cost,
        type_rule=_attn_type,
    )
)

FUSED_OPS = ("chunked_xent", "flash_attention")
