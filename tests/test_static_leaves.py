"""Leaves that are not arrays (an Equinox model's activation functions, strings) are held
static, as `eqx.filter_jit` holds them: closed over when tracing, checked on every call,
part of `@superopt.jit`'s signature and of the tuning cache's program key."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superopt
import superopt._api as api
from superopt._leaves import StaticLeaves, filter_jit, same_static
from superopt._tune import stable_key


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPEROPT_CACHE_DIR", str(tmp_path / "cache"))


def _normal(seed, *shape):
    return jax.random.normal(jax.random.key(seed), shape)


def fwd(m, x):
    return jax.vmap(m)(x)


def _mlp(seed=0, sizes=(64, 10, 128, 2)):
    return eqx.nn.MLP(*sizes, key=jax.random.PRNGKey(seed))


def _close(got, want):
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("wrap", [lambda f: f, eqx.filter_jit], ids=["plain", "filter_jit"])
def test_an_equinox_mlp_is_optimized_and_checks_its_activation(wrap):
    model, x = _mlp(), _normal(0, 32, 64)
    fn = wrap(fwd)
    opt = superopt.optimize(fn, model, x, cache=False)
    assert opt.report.verified
    _close(opt(model, x), fwd(model, x))
    # Gradients with respect to the input and to the model's arrays, and vmap.
    loss = lambda m, x: fwd(m, x).sum()  # noqa: E731
    opt_loss = lambda m, x: opt(m, x).sum()  # noqa: E731
    _close(jax.grad(opt_loss, argnums=1)(model, x), jax.grad(loss, argnums=1)(model, x))
    _close(eqx.filter_grad(opt_loss)(model, x), eqx.filter_grad(loss)(model, x))
    xs = jnp.stack([x, 2 * x])
    _close(jax.vmap(lambda x: opt(model, x))(xs), jax.vmap(lambda x: fwd(model, x))(xs))
    # New weights of the same shapes: the same optimized function takes them.
    other_weights = _mlp(seed=1)
    _close(opt(other_weights, x), fwd(other_weights, x))
    # Another activation is another program: optimize again.
    tanh_model = eqx.tree_at(lambda m: m.activation, model, jax.nn.tanh)
    with pytest.raises(superopt.SignatureError) as info:
        opt(tanh_model, x)
    message = str(info.value)
    assert "argument [0].activation" in message and "relu" in message and "tanh" in message
    assert "superopt.optimize again" in message and "@superopt.jit" in message


def test_a_rewritten_program_with_static_leaves():
    # The program path (not the original function): a matmul chain the search reorders,
    # with the activation a leaf of the parameters.
    def layer(p, v):
        return p["act"]((p["a"] @ p["b"]) @ v)

    p = {"a": _normal(0, 64, 64), "b": _normal(1, 64, 64), "act": jnp.tanh}
    v = _normal(2, 64, 2)
    opt = superopt.optimize(layer, p, v, cost_model="flops", cache=False)
    assert opt.report.status == "optimized", opt.report.reason
    assert len(opt.program.inputs) == 3  # the arrays; the activation is closed over
    _close(opt(p, v), layer(p, v))
    _close(jax.grad(lambda v: opt(p, v).sum())(v), jax.grad(lambda v: layer(p, v).sum())(v))
    with pytest.raises(superopt.SignatureError, match=r"argument \[0\]\['act'\]"):
        opt({**p, "act": jnp.sin}, v)
    with pytest.raises(superopt.SignatureError, match="argument leaf 2"):
        opt({**p, "act": jnp.tanh}, "not an array")


def test_superopt_jit_optimizes_once_per_activation():
    model, x = _mlp(sizes=(8, 3, 16, 1)), _normal(0, 4, 8)
    tanh_model = eqx.tree_at(lambda m: m.activation, model, jax.nn.tanh)
    jitted = superopt.jit(fwd, cache=False)
    _close(jitted(model, x), fwd(model, x))
    _close(jitted(tanh_model, x), fwd(tanh_model, x))
    assert len(jitted.optimized) == 2
    # The same activation again, with other weights: no new entry.
    _close(jitted(_mlp(seed=1, sizes=(8, 3, 16, 1)), x), fwd(_mlp(seed=1, sizes=(8, 3, 16, 1)), x))
    assert len(jitted.optimized) == 2
    # First met inside a transformation: optimized on concrete stand-ins of the arrays,
    # with the static leaves as they are.
    sin_model = eqx.tree_at(lambda m: m.activation, model, jnp.sin)
    grad = jax.grad(lambda x: jitted(sin_model, x).sum())(x)
    _close(grad, jax.grad(lambda x: fwd(sin_model, x).sum())(x))
    assert len(jitted.optimized) == 3


def test_superopt_jit_keys_an_unhashable_leaf_by_identity():
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __init__(self, scale):
            self.scale = scale

    def fn(p, x):
        return x * p["cfg"].scale

    jitted = superopt.jit(fn, cache=False)
    x = jnp.ones(3)
    first, second = Unhashable(2.0), Unhashable(3.0)
    np.testing.assert_allclose(jitted({"cfg": first}, x), 2.0)
    np.testing.assert_allclose(jitted({"cfg": second}, x), 3.0)
    np.testing.assert_allclose(jitted({"cfg": first}, x), 2.0)
    assert len(jitted.optimized) == 2


def test_a_string_leaf_and_a_none_leaf_among_arrays():
    def fn(p, x):
        y = getattr(jnp, p["mode"])(x @ p["w"])
        return y if p["skip"] is None else y + x

    p = {"w": _normal(0, 3, 3), "mode": "tanh", "skip": None}
    x = _normal(1, 5, 3)
    traced = superopt.trace(fn, p, x)
    assert [(s.path, s.value) for s in traced.static_leaves] == [("[0]['mode']", "tanh")]
    assert len(traced.program.inputs) == 2
    opt = superopt.optimize(fn, p, x, cache=False)
    _close(opt(p, x), fn(p, x))
    # An equal string is the same static leaf, whatever object holds it.
    _close(opt({**p, "mode": "".join(["ta", "nh"])}, x), fn(p, x))
    with pytest.raises(superopt.SignatureError, match=r"argument \[0\]\['mode'\] is str 'sin'"):
        opt({**p, "mode": "sin"}, x)


def test_a_budget_times_candidates_with_static_leaves():
    def layer(p, v):
        return p["act"]((p["a"] @ p["b"]) @ v)

    p = {"a": _normal(0, 32, 32), "b": _normal(1, 32, 32), "act": jnp.tanh}
    v = _normal(2, 32, 2)
    opt = superopt.optimize(layer, p, v, cost_model="flops", budget=2, cache=False)
    assert opt.report.measurements and opt.report.reference_s > 0
    assert all(m["measured_s"] > 0 for m in opt.report.measurements)
    _close(opt(p, v), layer(p, v))


def test_the_original_function_behind_the_check_takes_static_leaves(monkeypatch):
    # What comes back when superopt cannot carry the program: the original, jitted as
    # eqx.filter_jit would, behind the same signature check.
    def refuse(fn, *args, static_argnums=()):
        raise superopt.TraceError("equation `mystery` produces a token")

    monkeypatch.setattr(api, "trace", refuse)
    model, x = _mlp(sizes=(4, 2, 8, 1)), _normal(0, 3, 4)
    opt = superopt.optimize(fwd, model, x)
    assert opt.report.status == "fallback" and opt.program is None
    _close(opt(model, x), fwd(model, x))
    with pytest.raises(superopt.SignatureError, match=r"argument \[0\]\.activation"):
        opt(eqx.tree_at(lambda m: m.activation, model, jax.nn.tanh), x)


def test_the_tuning_cache_keys_on_the_program_the_static_leaves_make(tmp_path):
    model, x = _mlp(sizes=(8, 3, 16, 1)), _normal(0, 4, 8)
    tanh_model = eqx.tree_at(lambda m: m.activation, model, jax.nn.tanh)
    folder = str(tmp_path / "c")
    first = superopt.optimize(fwd, model, x, cache_dir=folder)
    again = superopt.optimize(fwd, _mlp(seed=1, sizes=(8, 3, 16, 1)), x, cache_dir=folder)
    assert not first.report.cached and again.report.cached
    # Another activation traces to another program, hence another cache key.
    keys = [stable_key(superopt.trace(fwd, m, x).program) for m in (model, tanh_model)]
    assert keys[0] != keys[1]
    other = superopt.optimize(fwd, tanh_model, x, cache_dir=folder)
    assert not other.report.cached
    _close(other(tanh_model, x), fwd(tanh_model, x))
    # A distinct function object that computes the same thing traces to the same program:
    # the stored winner serves it, and is right for it.
    relu_again = eqx.tree_at(lambda m: m.activation, model, lambda y: jnp.maximum(y, 0.0))
    same = superopt.optimize(fwd, relu_again, x, cache_dir=folder)
    _close(same(relu_again, x), fwd(relu_again, x))


def test_a_python_number_the_function_branches_on_gets_a_hint():
    def fn(p, x):
        return x if p["inference"] else -x

    with pytest.raises(superopt.TraceError, match=r"Python numbers.*\[0\]\['inference'\]"):
        superopt.optimize(fn, {"inference": True}, jnp.ones(3))


class _RaisingEq:
    def __eq__(self, other):
        raise ValueError("no comparison")

    __hash__ = object.__hash__


def test_static_leaves_compare_by_identity_then_by_a_boolean_equality():
    a, b = _RaisingEq(), _RaisingEq()
    assert same_static(a, a) and not same_static(a, b)
    array = np.ones(3)
    assert same_static(array, array) and not same_static(array, np.ones(3))
    assert not same_static(jnp.ones(()), jnp.ones(()))  # `==` answers an array, not a bool
    assert same_static("tanh", "".join(["ta", "nh"])) and not same_static("tanh", "sin")
    # As keys: by value where hashable, by identity where not.
    assert StaticLeaves([(1, "tanh")]) == StaticLeaves([(1, "tan" + "h")])
    assert hash(StaticLeaves([(1, "tanh")])) == hash(StaticLeaves([(1, "tan" + "h")]))
    assert StaticLeaves([(1, "tanh")]) != StaticLeaves([(2, "tanh")])
    assert StaticLeaves([(0, array)]) == StaticLeaves([(0, array)])
    assert StaticLeaves([(0, array)]) != StaticLeaves([(0, np.ones(3))])


def test_filter_jit_compiles_once_per_static_leaf():
    traces = []

    def fn(p, x):
        traces.append(p["act"])
        return p["act"](x)

    jitted = filter_jit(fn)
    x = jnp.linspace(-1, 1, 4)
    for act in (jnp.tanh, jnp.sin, jnp.tanh):
        np.testing.assert_allclose(jitted({"act": act}, x), act(x), rtol=1e-6)
    assert traces == [jnp.tanh, jnp.sin]


def test_a_model_passed_by_keyword():
    model, x = _mlp(sizes=(4, 2, 8, 1)), _normal(0, 3, 4)
    jitted = superopt.jit(fwd, cache=False)
    _close(jitted(x=x, m=model), fwd(model, x))
    opt = next(iter(jitted.optimized.values()))
    _close(opt(model, x=x), fwd(model, x))
    with pytest.raises(superopt.SignatureError, match=r"argument \[0\]\.activation"):
        opt(m=eqx.tree_at(lambda m: m.activation, model, jax.nn.tanh), x=x)
