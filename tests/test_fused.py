"""The fused ops equal the compositions they replace, in value and gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import superopt
from superopt.ir import Cost, Node, Params, ShapeError, make, node_cost
from superopt.ir._fused import chunked_xent, flash_attention

FAST = settings(max_examples=3, deadline=None, phases=(Phase.explicit, Phase.generate))
TOL = {"float32": (2e-4, 2e-4), "bfloat16": (4e-2, 6e-2)}


def _close(a, b, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(
        np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=rtol, atol=atol * scale
    )


def _xent_ref(h, w, labels, b):
    logits = h.astype(jnp.float32) @ w.astype(jnp.float32)
    if b is not None:
        logits = logits + b.astype(jnp.float32)[None, :]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _xent_inputs(n, d, v, seed, dtype, bias_dtype):
    """Hidden states, weights, labels in [-V, V) and a bias of `bias_dtype` (or None)."""
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    h = jax.random.normal(k[0], (n, d)).astype(dtype)
    w = jax.random.normal(k[1], (d, v)).astype(dtype)
    labels = jax.random.randint(k[2], (n,), -v, v)
    b = None if bias_dtype is None else jax.random.normal(k[3], (v,)).astype(bias_dtype)
    return h, w, labels, b


# What both chunked_xent property tests draw: shapes, chunk, a bias or none, and a seed.
_XENT_DRAWS = dict(
    n=st.integers(1, 9),
    d=st.integers(1, 12),
    v=st.integers(2, 70),
    chunk=st.integers(1, 80),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)


def _xent_value_and_grad(fn, h, w, b):
    """`fn(h, w, b)` per row and the gradient of a weighted sum of it, compiled once."""
    n = h.shape[0]

    def loss(h, w, b):
        out = fn(h, w, b)
        return jnp.sum(out.astype(jnp.float32) * jnp.arange(1.0, n + 1)), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(h, w, b)
    return out, grads


@FAST
@given(**_XENT_DRAWS, dtype=st.sampled_from(["float32", "bfloat16"]))
def test_chunked_xent_value_and_grad(n, d, v, chunk, bias, dtype, seed):
    h, w, labels, b = _xent_inputs(n, d, v, seed, dtype, dtype if bias else None)
    got, g_got = _xent_value_and_grad(
        lambda h, w, b: chunked_xent(h, w, labels, b, chunk=chunk), h, w, b
    )
    want, g_ref = _xent_value_and_grad(lambda h, w, b: _xent_ref(h, w, labels, b), h, w, b)
    assert got.shape == (n,) and got.dtype == jnp.dtype(dtype)
    _close(got, want, dtype, scale=d)
    for x, y in zip(g_got, g_ref):
        if y is not None:
            assert x.dtype == y.dtype
            _close(x, y, dtype, scale=n)


@FAST
@given(**_XENT_DRAWS)
def test_chunked_xent_loss_dtype_is_the_loss_of_upcast_logits(n, d, v, chunk, bias, seed):
    # Mixed precision: bfloat16 weights, a float32 loss of the logits `(h @ w).astype(f32)`.
    h, w, labels, b = _xent_inputs(n, d, v, seed, jnp.bfloat16, jnp.float32 if bias else None)

    def ref(h, w, b):
        logits = (h @ w).astype(jnp.float32) + (0.0 if b is None else b[None, :])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    def fused(h, w, b):
        return chunked_xent(h, w, labels, b, chunk=chunk, loss_dtype=jnp.float32)

    got, g_got = _xent_value_and_grad(fused, h, w, b)
    want, g_ref = _xent_value_and_grad(ref, h, w, b)
    assert got.dtype == jnp.float32
    # XLA folds the upcast into the product: neither rounds the logits to bfloat16.
    _close(got, want, "float32", scale=d)
    for x, y in zip(g_got, g_ref):
        if y is not None:
            assert x.dtype == y.dtype
            _close(x, y, "bfloat16" if x.dtype == jnp.bfloat16 else "float32", scale=n)


def _attn_ref(q, k, v, mask, causal):
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    return jax.nn.dot_product_attention(*f32, mask=mask, is_causal=causal)


@FAST
@given(
    b=st.integers(1, 2),
    t=st.integers(1, 20),
    s=st.integers(1, 24),
    h=st.integers(1, 3),
    d=st.integers(1, 8),
    block=st.integers(1, 30),
    causal=st.booleans(),
    masked=st.booleans(),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 2**16),
)
def test_flash_attention_value_and_grad(b, t, s, h, d, block, causal, masked, dtype, seed):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(k[0], (b, t, h, d)).astype(dtype)
    kk = jax.random.normal(k[1], (b, s, h, d)).astype(dtype)
    v = jax.random.normal(k[2], (b, s, h, d)).astype(dtype)
    mask = jax.random.bernoulli(k[3], 0.6, (b, 1, t, s)) if masked else None

    weights = jnp.arange(q.size, dtype=jnp.float32).reshape(q.shape) / q.size

    def value_and_grad(fn):
        # One compilation per side: the value and its gradient together.
        def loss(*a):
            out = fn(*a)
            return jnp.sum(out.astype(jnp.float32) * weights), out

        return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, kk, v)

    (_, got), g_got = value_and_grad(
        lambda *x: flash_attention(*x, mask, block=block, causal=causal)
    )
    (_, want), g_ref = value_and_grad(lambda *x: _attn_ref(*x, mask, causal))
    assert got.shape == q.shape and got.dtype == q.dtype
    _close(got, want, dtype)
    for x, y in zip(g_got, g_ref):
        _close(x, y, dtype, scale=4.0)


def test_flash_attention_gradient_of_a_fully_masked_row():
    # A query with every key masked attends uniformly to all of them, as in
    # `jax.nn.dot_product_attention` (its scores are all the same finite fill); the
    # backward pass must give it the same uniform weights (it once gave each key weight 1).
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    q, kk, v = (jax.random.normal(key, (1, 6, 2, 4)) for key in k)
    mask = jnp.ones((1, 1, 6, 8), bool).at[:, :, 2].set(False)
    kk, v = jnp.concatenate([kk, kk[:, :2]], 1), jnp.concatenate([v, v[:, :2] * 2], 1)
    weights = jnp.cos(jnp.arange(q.size, dtype=jnp.float32)).reshape(q.shape)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * weights)

    fused = loss(lambda q, k, v: flash_attention(q, k, v, mask, block=3))
    ref = loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask))
    grads = [jax.jit(jax.grad(f, (0, 1, 2)))(q, kk, v) for f in (fused, ref)]
    for got, want in zip(*grads):
        _close(got, want, "float32")


def _inp(i, shape, dtype="float32"):
    return Node("input", (), Params(index=i), shape, np.dtype(dtype))


def test_ir_nodes_type_lower_and_render():
    h, w, lab = _inp(0, (4, 8)), _inp(1, (8, 100)), _inp(2, (4,), "int32")
    node = make("chunked_xent", h, w, lab, chunk=64)
    assert node.shape == (4,) and node.dtype == np.float32
    prog = superopt.ir.Program((h, w, lab), (node,))
    src = superopt.render(prog)
    assert "fused.chunked_xent(x0, x1, x2, chunk=64)" in src
    args = (jnp.ones((4, 8)), jnp.ones((8, 100)) / 8, jnp.arange(4, dtype=jnp.int32))
    (out,) = superopt.to_callable(prog)(*args)
    np.testing.assert_allclose(out, _xent_ref(*args, None), rtol=1e-5)

    q = _inp(0, (1, 16, 2, 4))
    att = make("flash_attention", q, q, q, block=8, scale=0.5, causal=True, mask_value=-1e30)
    assert att.shape == (1, 16, 2, 4)
    src = superopt.render(superopt.ir.Program((q,), (att,)))
    assert "fused.flash_attention(x0, x0, x0, block=8, causal=True" in src


def test_type_errors_name_the_problem():
    h, w = _inp(0, (4, 8)), _inp(1, (9, 100))
    with pytest.raises(ShapeError, match="chunked_xent"):
        make("chunked_xent", h, w, _inp(2, (4,), "int32"), chunk=64)
    q, k = _inp(0, (1, 16, 2, 4)), _inp(1, (1, 16, 3, 4))
    with pytest.raises(ShapeError, match="flash_attention"):
        make("flash_attention", q, k, k, block=8, scale=1.0, causal=False, mask_value=0.0)
    with pytest.raises(ShapeError, match="chunk"):
        chunked_xent(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.zeros(2, jnp.int32), chunk=0)


def test_costs_do_not_count_the_big_intermediate_and_trade_off_tiles():
    h, w, lab = _inp(0, (256, 1024)), _inp(1, (1024, 32768)), _inp(2, (256,), "int32")
    costs = {c: node_cost(make("chunked_xent", h, w, lab, chunk=c)) for c in (64, 2048, 32768)}
    logits_bytes = 256 * 32768 * 4
    assert all(isinstance(c, Cost) for c in costs.values())
    # Small chunks re-read h often; a whole-vocabulary chunk spills its logits.
    assert costs[64].bytes > costs[2048].bytes < costs[32768].bytes
    assert costs[2048].bytes < w.nbytes + logits_bytes
    assert costs[64].flops == costs[32768].flops == pytest.approx(2.0 * 256 * 1024 * 32768, 0.01)

    q = _inp(0, (1, 4096, 8, 64))
    att = {
        blk: node_cost(make("flash_attention", q, q, q, block=blk, scale=1.0, causal=False,
                            mask_value=0.0))
        for blk in (16, 128, 4096)
    }  # fmt: skip
    assert att[16].bytes > att[128].bytes and att[4096].bytes > att[128].bytes
