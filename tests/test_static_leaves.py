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
        if eqx.is_array(b):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        else:  # a static leaf (an activation function): the very same object
            assert a is b or a == b, (a, b)


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


def test_a_python_number_the_function_branches_on_is_held_static():
    def fn(p, x):
        return x if p["inference"] else -x

    x = jnp.arange(3.0)
    traced = superopt.trace(fn, {"inference": True}, x)
    assert traced.hold_numbers and "[0]['inference']" in traced.note
    opt = superopt.optimize(fn, {"inference": True}, x, cache=False)
    assert "held static" in opt.report.reason and "[0]['inference']" in opt.report.reason
    np.testing.assert_allclose(opt({"inference": True}, x), x)
    np.testing.assert_allclose(opt({"inference": 1}, x), x)  # 1 == True, as under jax.jit
    with pytest.raises(superopt.SignatureError, match=r"argument \[0\]\['inference'\] is bool"):
        opt({"inference": False}, x)


def test_branching_on_an_array_still_fails_with_the_hint():
    # Holding the Python numbers static cannot help: the branch is on an array's value.
    def fn(x, scale):
        return x * scale if x.sum() > 0 else -x

    with pytest.raises(superopt.TraceError, match=r"Python numbers.*\[1\].*static_argnums"):
        superopt.optimize(fn, jnp.ones(3), 2.0)
    # A function that branches on nothing keeps tracing its numbers: one program for all.
    opt = superopt.optimize(lambda x, s: x * s, jnp.ones(3), 2.0, cache=False)
    assert not opt.report.reason.count("held static")
    np.testing.assert_allclose(opt(jnp.ones(3), 3.0), 3.0)


def _mha():
    mha = eqx.nn.MultiheadAttention(4, 64, dropout_p=0.1, key=jax.random.PRNGKey(0))
    return eqx.nn.inference_mode(mha)


def test_multihead_attention_with_dropout_branches_on_its_inference_flag():
    mha, x = _mha(), _normal(0, 8, 64)
    assert mha.dropout.inference is True
    fn = lambda m, x: m(x, x, x)  # noqa: E731
    opt = superopt.optimize(fn, mha, x, cache=False)
    assert opt.report.verified
    _close(opt(mha, x), fn(mha, x))
    _close(opt(_mha(), 2 * x), fn(mha, 2 * x))
    training = eqx.tree_at(lambda m: m.dropout.inference, mha, False)
    with pytest.raises(superopt.SignatureError, match=r"\[0\]\.dropout\.inference"):
        opt(training, x)
    other_p = eqx.tree_at(lambda m: m.dropout.p, mha, 0.5)
    with pytest.raises(superopt.SignatureError, match=r"\[0\]\.dropout\.p is float 0.5"):
        opt(other_p, x)


def test_superopt_jit_optimizes_again_for_another_value_of_a_flag():
    def fn(p, x):
        return x * p["scale"] if p["inference"] else -x

    jitted = superopt.jit(fn, cache=False)
    x = jnp.arange(3.0)
    np.testing.assert_allclose(jitted({"inference": True, "scale": 2.0}, x), 2 * x)
    np.testing.assert_allclose(jitted({"inference": False, "scale": 2.0}, x), -x)
    np.testing.assert_allclose(jitted({"inference": True, "scale": 3.0}, x), 3 * x)
    np.testing.assert_allclose(jitted({"inference": True, "scale": 2.0}, 2 * x), 4 * x)
    assert len(jitted.optimized) == 3


def test_an_equinox_training_step_returns_the_updated_model():
    optax = pytest.importorskip("optax")
    mlp, x = _mlp(sizes=(16, 16, 32, 2)), _normal(0, 8, 16)
    opt = optax.adam(1e-3)
    state = opt.init(eqx.filter(mlp, eqx.is_array))

    def step(model, state, x):
        def loss(m):
            return jnp.mean(jax.vmap(m)(x) ** 2)

        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, value

    fast = superopt.optimize(step, mlp, state, x, cost_model="flops", cache=False)
    assert fast.report.verified
    traced = fast._traced
    assert {id(v) for _, v in traced.static_outputs} >= {id(mlp.activation)}
    got, want = fast(mlp, state, x), step(mlp, state, x)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    _close(got, want)
    assert got[0].activation is mlp.activation and got[0].final_activation is mlp.final_activation
    model, opt_state = mlp, state
    ref_model, ref_state = mlp, state
    for _ in range(2):
        model, opt_state, value = fast(model, opt_state, x)
        ref_model, ref_state, ref_value = step(ref_model, ref_state, x)
        _close((model, opt_state, value), (ref_model, ref_state, ref_value))


def test_outputs_that_are_not_arrays_come_back_as_they_were():
    x = jnp.arange(4.0)
    opt = superopt.optimize(lambda x: (x * 2, "tag", None, 0.5), x, cache=False)
    got = opt(x)
    np.testing.assert_allclose(got[0], 2 * x)
    # A string and a Python number come back as they are, as under eqx.filter_jit.
    assert got[1:] == ("tag", None, 0.5) and type(got[3]) is float
    # The program computes the array alone; the others are held by the trace.
    assert len(opt._traced.program.outputs) == 1
    assert opt._traced.static_outputs == ((1, "tag"), (2, 0.5))  # None is no leaf

    # The original-function path and a rewritten program alike.
    def chain(a, b, v):
        return {"y": (a @ b) @ v, "act": jnp.tanh}

    a, b, v = _normal(0, 32, 32), _normal(1, 32, 32), _normal(2, 32, 2)
    rewritten = superopt.optimize(chain, a, b, v, cost_model="flops", cache=False)
    assert rewritten.report.status == "optimized", rewritten.report.reason
    out = rewritten(a, b, v)
    assert out["act"] is jnp.tanh
    _close(out["y"], chain(a, b, v)["y"])
    _close(
        jax.grad(lambda v: rewritten(a, b, v)["y"].sum())(v),
        jax.grad(lambda v: chain(a, b, v)["y"].sum())(v),
    )


def test_a_differing_static_output_fails_verification():
    x = jnp.ones(3)
    verdict = superopt.verify(lambda x: (x, "a"), lambda x: (x, "b"), x)
    assert not verdict.ok and "output[1] is str 'b' in the candidate but str 'a'" in verdict.message
    assert superopt.verify(lambda x: (x, jnp.tanh), lambda x: (x + 0, jnp.tanh), x).ok


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


def test_time_callables_takes_an_equinox_model():
    # Its activation is held static: each callable is timed on the model's arrays alone.
    model, x = _mlp(), _normal(0, 16, 64)
    fns = {"fwd": fwd, "filter_jit": eqx.filter_jit(fwd)}
    times = superopt.time_callables(fns, (model, x), warmup=0, min_rounds=2, max_rounds=2)
    assert list(times) == ["fwd", "filter_jit"]
    assert all(t.n == 2 and t.median_s > 0 for t in times.values())
