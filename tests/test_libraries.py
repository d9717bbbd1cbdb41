"""Real library programs round-trip through trace -> IR -> codegen unchanged in meaning.

`LIBRARY_CASES` is importable so that other tests (e.g. of `superopt.optimize`) can run
the same programs: each entry is `(name, build)` where `build()` returns `(fn, args)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
import pytest
from helpers import roundtrip
from jax import lax
from jax.example_libraries import stax

import superopt.testing as sot

Build = Callable[[], tuple[Callable[..., Any], tuple[Any, ...]]]


def _mlp() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    model = eqx.nn.MLP(8, 3, width_size=16, depth=2, activation=jax.nn.gelu, key=jr.PRNGKey(0))
    params, static = eqx.partition(model, eqx.is_array)

    def mlp(params: Any, x: jax.Array) -> jax.Array:
        return jax.vmap(eqx.combine(params, static))(x)

    return mlp, (params, jr.normal(jr.PRNGKey(1), (5, 8)))


def _attention() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    mha = eqx.nn.MultiheadAttention(num_heads=2, query_size=8, key=jr.PRNGKey(2))
    params, static = eqx.partition(mha, eqx.is_array)

    def attention(params: Any, q: jax.Array, kv: jax.Array) -> jax.Array:
        return jax.vmap(eqx.combine(params, static))(q, kv, kv)

    k1, k2 = jr.split(jr.PRNGKey(3))
    return attention, (params, jr.normal(k1, (2, 5, 8)), jr.normal(k2, (2, 7, 8)))


def _stax_cnn() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    init, apply = stax.serial(
        stax.Conv(4, (3, 3), padding="SAME"),
        stax.BatchNorm(axis=(0, 1, 2)),
        stax.Relu,
        stax.AvgPool((2, 2), strides=(2, 2)),
        stax.Flatten,
        stax.Dense(10),
        stax.LogSoftmax,
    )
    _, params = init(jr.PRNGKey(4), (2, 8, 8, 3))

    def cnn(params: Any, x: jax.Array) -> jax.Array:
        # stax's Dense adds its bias by implicit rank promotion.
        with jax.numpy_rank_promotion("allow"):
            return apply(params, x)

    return cnn, (params, jr.normal(jr.PRNGKey(5), (2, 8, 8, 3)))


def _cross_entropy() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    logits = jr.normal(jr.PRNGKey(6), (6, 11))
    return cross_entropy, (logits, jnp.array([0, 3, 10, 2, 7, 7], jnp.int32))


def _adamw_step() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    opt = optax.adamw(1e-2, weight_decay=1e-3)
    k1, k2 = jr.split(jr.PRNGKey(7))
    params = {"w": jr.normal(k1, (4, 3)), "b": jr.normal(k2, (3,))}
    grads = jax.tree_util.tree_map(lambda p: 0.1 * p + 0.3, params)
    state = opt.init(params)
    # One real step first, so the moments and the count are not trivial.
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)

    def adamw_step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        updates, new_state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), new_state

    return adamw_step, (params, grads, state)


def _dot_product_attention() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    k1, k2, k3 = jr.split(jr.PRNGKey(8), 3)
    q, k, v = (jr.normal(key, (2, 6, 2, 4)) for key in (k1, k2, k3))

    def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True)

    return dot_product_attention, (q, k, v)


def _scan_rnn() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    k1, k2, k3 = jr.split(jr.PRNGKey(9), 3)
    w, u = 0.3 * jr.normal(k1, (5, 5)), 0.3 * jr.normal(k2, (3, 5))
    xs = jr.normal(k3, (7, 3))

    def rnn(w: jax.Array, u: jax.Array, xs: jax.Array) -> jax.Array:
        def cell(h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
            h = jnp.tanh(h @ w + x @ u)
            return h, h

        h, hs = lax.scan(cell, jnp.zeros(5), xs)
        return h + hs.sum(0)

    return rnn, (w, u, xs)


LIBRARY_CASES: list[tuple[str, Build]] = [
    ("equinox_mlp", _mlp),
    ("equinox_multihead_attention", _attention),
    ("stax_cnn_batchnorm", _stax_cnn),
    ("optax_cross_entropy", _cross_entropy),
    ("optax_adamw_step", _adamw_step),
    ("jax_dot_product_attention", _dot_product_attention),
    ("lax_scan_rnn", _scan_rnn),
]


@pytest.mark.parametrize("name, build", LIBRARY_CASES, ids=[n for n, _ in LIBRARY_CASES])
def test_library_roundtrip(name: str, build: Build) -> None:
    fn, args = build()
    rt = roundtrip(fn, *args)
    # Batch normalization subtracts each channel's mean, so the gradient of the conv bias
    # before it is zero up to rounding (around 1e-7 on either side, which rounding decides
    # differently from one CPU to another): judged against that leaf's own size, noise
    # would be compared with noise. A magnitude floor of 1e-2 there: differences up to 1e-6
    # (rtol times the floor) pass on elements that small.
    atol = 1e-2 if name == "stax_cnn_batchnorm" else None
    # The example arguments first, then one set of random ones; gradients too.
    sot.check_equivalent(fn, rt, *args, num_random=1, grad=True, atol=atol)


def test_library_roundtrip_detects_a_change() -> None:
    # The comparison above must be able to fail: a perturbed model is caught.
    fn, args = _mlp()
    params, _ = args
    perturbed = jax.tree_util.tree_map(lambda p: p * 1.01, params)
    rt = roundtrip(fn, *args)
    with pytest.raises(AssertionError, match="differ"):
        sot.check_equivalent(fn, lambda p, x: rt(perturbed, x), *args, num_random=0)


@pytest.mark.parametrize("name, build", LIBRARY_CASES, ids=[n for n, _ in LIBRARY_CASES])
def test_library_optimize_returns_a_verified_callable(name: str, build: Build, tmp_path) -> None:
    import superopt

    fn, args = build()
    opt = superopt.optimize(fn, *args, cache_dir=tmp_path)
    assert opt.report.verified, opt.report.reason
    assert opt.report.status in ("optimized", "unchanged"), opt.report.reason
    sot.check_equivalent(fn, opt, *args, num_random=1)
