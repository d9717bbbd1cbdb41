"""Keyword arguments: `@superopt.jit` takes them as `jax.jit` does (`static_argnames`
included), and an `Optimized` takes its example call's arguments by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import superopt
import superopt._api as api


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPEROPT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def optimize_calls(monkeypatch):
    """The layouts `@superopt.jit` runs `superopt.optimize` for, in order."""
    calls = []
    real = api.optimize

    def counting(fn, *args, **options):
        calls.append((fn.__name__, len(args), options["static_argnums"]))
        return real(fn, *args, **options)

    monkeypatch.setattr(superopt._jit, "optimize", counting)
    return calls


def _normal(seed, *shape):
    return jax.random.normal(jax.random.key(seed), shape)


X, W, B = _normal(0, 4, 3), _normal(1, 3, 2), _normal(2, 2)


def dense(x, w, b):
    return jnp.tanh(x @ w + b[None, :])


def layer(x, w, training=True):
    y = x @ w
    return jnp.tanh(y) * 2 if training else y


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_keyword_arguments_are_dynamic_and_their_order_does_not_matter(optimize_calls):
    jitted = superopt.jit(dense, cache=False)
    close(jitted(X, w=W, b=B), jax.jit(dense)(X, w=W, b=B))
    close(jitted(X, b=B, w=W), jax.jit(dense)(X, b=B, w=W))
    # New values of the same shapes: dynamic arguments, the same optimized function.
    close(jitted(x=X + 1, b=B * 2, w=W - 1), dense(X + 1, W - 1, B * 2))
    assert len(optimize_calls) == 2 and len(jitted.optimized) == 2
    close(jitted(X, W, b=B), dense(X, W, B))
    assert [call[1:] for call in optimize_calls] == [(3, ()), (3, ()), (3, ())]
    assert len(jitted.optimized) == 3  # (x, w=, b=), (x=, w=, b=), (x, w, b=)

    @given(st.permutations(["x", "w", "b"]))
    @settings(max_examples=6)
    def any_order(names):
        values = {"x": X, "w": W, "b": B}
        close(jitted(**{name: values[name] for name in names}), dense(X, W, B))

    any_order()
    assert len(jitted.optimized) == 3 and len(optimize_calls) == 3


def test_positional_and_keyword_calls_of_a_parameter_agree():
    jitted = superopt.jit(dense, cache=False)
    by_position = jitted(X, W, B)
    close(jitted(X, W, b=B), by_position)
    close(jitted(X, w=W, b=B), by_position)
    close(by_position, jax.jit(dense)(X, w=W, b=B))
    # As in jax.jit, each way of passing the arguments is a signature of its own.
    assert len(jitted.optimized) == 3


def test_static_argnames_key_the_cache_by_value(optimize_calls):
    jitted = superopt.jit(layer, static_argnames="training", cache=False)
    reference = jax.jit(layer, static_argnames="training")
    off, on = jitted(X, W, training=False), jitted(X, W, training=True)
    close(off, reference(X, W, training=False))
    close(on, reference(X, W, training=True))
    assert not np.allclose(off, on)
    assert len(jitted.optimized) == 2
    jitted(X + 1, W, training=False)
    assert len(jitted.optimized) == 2 and len(optimize_calls) == 2
    # The keyword slot after the two positional arguments is static.
    assert [call[2] for call in optimize_calls] == [(2,), (2,)]
    with pytest.raises(superopt.SignatureError, match="static argument 'training'"):
        jitted(X, W, training=[False])


def test_static_argnames_and_static_argnums_map_onto_each_other(optimize_calls):
    # Named static, passed by position: static too (a traced bool could not pick a branch).
    by_name = superopt.jit(layer, static_argnames="training", cache=False)
    close(by_name(X, W, False), layer(X, W, False))
    close(by_name(X, W, True), layer(X, W, True))
    assert len(by_name.optimized) == 2 and optimize_calls[-1][2] == (2,)

    # A static position, passed by keyword: static too (a shape must be a Python value).
    def reshape(x, shape):
        return jnp.sin(x).reshape(shape)

    by_number = superopt.jit(reshape, static_argnums=1, cache=False)
    close(by_number(X, shape=(2, 6)), jnp.sin(X).reshape(2, 6))
    close(by_number(X, (6, 2)), jnp.sin(X).reshape(6, 2))
    assert [call[2] for call in optimize_calls[-2:]] == [(1,), (1,)]

    # Given both, neither is read into the other (jax.jit's rule): by position, `training`
    # is dynamic, and since a traced bool cannot pick a Python branch, superopt holds it
    # static after all (as eqx.filter_jit does): one optimization per value.
    both = superopt.jit(layer, static_argnums=(), static_argnames="training", cache=False)
    close(both(X, W, training=False), layer(X, W, training=False))
    close(both(X, W, False), layer(X, W, False))
    close(both(X, W, True), layer(X, W, True))
    assert optimize_calls[-1][2] == () and len(both.optimized) == 3


def test_keyword_only_parameters():
    def scaled(x, w, *, scale, bias=0.0):
        return jnp.tanh(x @ w) * scale + bias

    jitted = superopt.jit(scaled, cache=False)
    close(jitted(X, W, scale=B[None, :]), jax.jit(scaled)(X, W, scale=B[None, :]))
    close(jitted(X, W, scale=2.0, bias=1.0), jax.jit(scaled)(X, W, scale=2.0, bias=1.0))
    static = superopt.jit(scaled, static_argnames=("scale",), cache=False)
    close(static(X, W, scale=3), scaled(X, W, scale=3))
    close(static(X, W, scale=4), scaled(X, W, scale=4))
    assert len(static.optimized) == 2


def test_a_function_taking_keywords_and_a_pytree_by_keyword():
    def parts(x, **terms):
        return x @ terms["params"]["w"] + terms["params"]["b"][None, :] * terms["gain"]

    params = {"w": W, "b": B}
    jitted = superopt.jit(parts, static_argnames="anything", cache=False)
    out = jitted(X, params=params, gain=0.5)
    close(out, jax.jit(parts)(X, params=params, gain=0.5))
    close(
        jitted(X, gain=0.5, params={"w": W + 1, "b": B}),
        parts(X, params={"w": W + 1, "b": B}, gain=0.5),
    )
    assert len(jitted.optimized) == 1
    # A pytree of another structure is another signature.
    close(jitted(X, params={"w": W, "b": B, "unused": B}, gain=0.5), out)
    assert len(jitted.optimized) == 2


def test_keywords_inside_jit_and_grad():
    jitted = superopt.jit(dense, cache=False)
    close(jax.jit(lambda x, w: jitted(x, w=w, b=B))(X, W), dense(X, W, B))
    grad = jax.grad(lambda w: jitted(X, w=w, b=B).sum())(W)
    close(grad, jax.grad(lambda w: dense(X, w, B).sum())(W))
    static = superopt.jit(layer, static_argnames="training", cache=False)
    grad = jax.grad(lambda w: static(X, w=w, training=True).sum())(W)
    close(grad, jax.grad(lambda w: layer(X, w, training=True).sum())(W))
    close(jax.vmap(lambda x: static(x, W, training=False))(X[None]), layer(X, W, False)[None])


def test_a_python_scalar_by_keyword_is_not_a_typed_one():
    a = jnp.arange(-32, 32, dtype=jnp.int8).reshape(8, 8)

    def scale(a, *, s):
        return (s * a) @ a

    jitted = superopt.jit(scale, cache=False)
    weak, typed = jitted(a, s=100), jitted(a, s=jnp.int32(100))
    assert len(jitted.optimized) == 2
    assert weak.dtype == scale(a, s=100).dtype == jnp.int8
    assert typed.dtype == jnp.int32 and (typed == scale(a, s=jnp.int32(100))).all()
    # Under an enclosing jit the scalar stays weakly typed: the first signature again.
    np.testing.assert_array_equal(jax.jit(lambda s: jitted(a, s=s))(3), scale(a, s=3))
    assert len(jitted.optimized) == 2


def test_static_argnames_are_checked_against_the_signature_as_jax_jit_does():
    with pytest.raises(ValueError, match="'trainin', which is not a parameter of layer"):
        superopt.jit(layer, static_argnames="trainin")
    with pytest.raises(ValueError, match="positional-only parameter"):
        superopt.jit(lambda x, /, n: x * n, static_argnames="x")
    with pytest.raises(ValueError, match="static_argnums 3 is out of range"):
        superopt.jit(layer, static_argnums=3)
    with pytest.raises(TypeError, match="static_argnames must be a str"):
        superopt.jit(layer, static_argnames=[1])
    # A function taking **keywords takes any name.
    superopt.jit(lambda x, **kw: x, static_argnames="anything")


def test_report_and_source_name_the_users_function():
    jitted = superopt.jit(layer, static_argnames="training", cache=False)
    jitted(X, w=W, training=True)
    (opt,) = jitted.optimized.values()
    assert opt.report.function.endswith("layer") and opt.__name__ == "layer"
    if opt.report.status == "optimized":
        assert opt.source.startswith("def layer(")
    else:
        assert "original function" in opt.source and "layer" in opt.source
    assert repr(jitted) == "<superopt.jit layer: 1 signature(s)>"


class _NoSignature:
    """A callable whose signature `inspect` cannot read, like a C function's."""

    __signature__ = "unreadable"

    def __call__(self, x, n):
        return x * n


def test_a_function_without_a_signature_still_works():
    fn = _NoSignature()
    jitted = superopt.jit(fn, static_argnums=1, cache=False)
    close(jitted(X, 3), X * 3)
    close(jitted(X, n=B[0]), X * B[0])  # by keyword: dynamic, no name to map it to
    opt = superopt.optimize(fn, X, 2.0, cache=False)
    close(opt(X, 2.0), X * 2)
    with pytest.raises(superopt.SignatureError, match="takes arguments by position only"):
        opt(X, n=2.0)


def test_optimized_takes_the_example_calls_arguments_by_name():
    def fn(x, w, b=0.5, *, scale=1.0):
        return dense(x, w, jnp.broadcast_to(b, (2,))) * scale

    opt = superopt.optimize(fn, X, W, cache=False)
    expected = opt(X, W)
    close(opt(X, w=W), expected)
    close(opt(w=W, x=X), expected)
    close(opt(X, w=W + 1), fn(X, W + 1))
    statics = superopt.optimize(fn, X, W, 0.5, static_argnums=2, cache=False)
    # A parameter the call leaves out takes its default, checked against the signature.
    close(statics(X, w=W), fn(X, W, 0.5))
    with pytest.raises(superopt.SignatureError, match="static argument 2 differs"):
        superopt.optimize(fn, X, W, 0.25, static_argnums=2, cache=False)(X, w=W)


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        ((X, W), {"z": 1}, r"fn\(\) got an unexpected keyword argument 'z'"),
        ((X, W), {"scale": 2.0}, "'scale' is a keyword-only parameter of .*fn, which the example"),
        ((X,), {"x": X, "w": W}, r"got argument 'x' both by position and by keyword"),
        ((X, W), {"b": 1.0}, "'b' is not among the arguments of the example call"),
        ((X,), {"b": 1.0}, "'b' is not among the arguments of the example call"),
        ((), {"x": X}, r"is missing argument 'w'"),
    ],
    ids=["unknown", "keyword-only", "twice", "untraced-default", "untraced-first", "missing"],
)
def test_optimized_refuses_keywords_it_cannot_place(args, kwargs, message):
    def fn(x, w, b=0.5, *, scale=1.0):
        return dense(x, w, jnp.broadcast_to(b, (2,))) * scale

    opt = superopt.optimize(fn, X, W, cache=False)
    with pytest.raises(superopt.SignatureError, match=message) as err:
        opt(*args, **kwargs)
    assert "takes the 2 argument(s) of the example call, by position or by name (x, w)" in str(
        err.value
    )


def test_optimized_names_keywords_for_positional_only_and_var_keyword_parameters():
    def fn(x, /, w, **rest):
        return x @ w

    opt = superopt.optimize(fn, X, W, cache=False)
    close(opt(X, w=W), X @ W)
    with pytest.raises(superopt.SignatureError, match="'x' is a positional-only parameter"):
        opt(x=X, w=W)
    with pytest.raises(superopt.SignatureError, match=r"'extra' would go to the \*\*keywords"):
        opt(X, W, extra=1)


def test_a_parameter_named_self_is_an_ordinary_keyword():
    def method(self, x):
        return jnp.sin(x) * self

    close(superopt.jit(method, cache=False)(self=2.0, x=X), method(2.0, X))
    close(superopt.optimize(method, 2.0, X, cache=False)(x=X, self=2.0), method(2.0, X))


def test_an_entry_built_for_a_keyword_call_is_called_as_that_call_was():
    jitted = superopt.jit(dense, cache=False)
    expected = dense(X, W, B)
    close(jitted(X, b=B, w=W), expected)
    (entry,) = jitted.optimized.values()
    close(entry(X, b=B, w=W), expected)
    close(entry(X, w=W, b=B), expected)  # the order of keywords does not matter
    with pytest.raises(superopt.SignatureError, match="unexpected keyword argument 'y'"):
        entry(X, y=W, b=B)

    def scaled(*xs, scale):  # no names for the positions: they stay positional
        return sum(xs) * scale

    jitted = superopt.jit(scaled, cache=False)
    close(jitted(X, X, scale=2.0), X * 4.0)
    (entry,) = jitted.optimized.values()
    close(entry(X, X, scale=3.0), X * 6.0)
    with pytest.raises(superopt.SignatureError, match="positional-only"):
        entry(X, arg1=X, scale=2.0)
