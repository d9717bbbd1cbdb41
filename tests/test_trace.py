"""Tracing: pytrees, static arguments, inlining, opaque nodes, errors, and speed."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import assert_tree_allclose, roundtrip, scalar_loss
from jax import lax

import superopt
from superopt._search import search


def _grad_matches(fn: Any, *args: Any, argnums: tuple[int, ...] = (0,)) -> None:
    rt = roundtrip(fn, *args)
    expected = jax.grad(scalar_loss(fn), argnums=argnums)(*args)
    actual = jax.grad(scalar_loss(rt), argnums=argnums)(*args)
    assert_tree_allclose(actual, expected, rtol=1e-5, atol=1e-6, what="gradient")


def test_pytrees_in_and_out(getkey: Any) -> None:
    def fn(params: dict[str, Any], batch: tuple[jax.Array, jax.Array]) -> dict[str, Any]:
        x, y = batch
        h = jnp.tanh(x @ params["w"] + params["b"][None, :])
        return {"loss": jnp.mean((h - y) ** 2), "parts": [h, h.sum(0)]}

    params = {"w": jr.normal(getkey(), (4, 3)), "b": jr.normal(getkey(), (3,))}
    batch = (jr.normal(getkey(), (5, 4)), jr.normal(getkey(), (5, 3)))
    rt = roundtrip(fn, params, batch)
    assert rt.traced.out_tree == jax.tree_util.tree_structure(fn(params, batch))
    assert len(rt.traced.program.inputs) == 4 and len(rt.traced.program.outputs) == 3
    assert_tree_allclose(rt(params, batch), fn(params, batch))
    _grad_matches(fn, params, batch)


def test_static_arguments() -> None:
    def fn(x: jax.Array, n: int, mode: str) -> jax.Array:
        for _ in range(n):
            x = jnp.sin(x) if mode == "sin" else jnp.cos(x)
        return x

    x = jnp.linspace(-1.0, 1.0, 6)
    rt = roundtrip(fn, x, 3, "sin", static_argnums=(1, 2))
    assert rt.traced.program.count_ops()["sin"] == 3
    assert len(rt.traced.program.inputs) == 1
    assert_tree_allclose(rt(x, 3, "sin"), fn(x, 3, "sin"))
    with pytest.raises(superopt.SignatureError, match="static argument 1"):
        rt(x, 4, "sin")
    with pytest.raises(superopt.TraceError, match="out of range"):
        superopt.trace(fn, x, 3, "sin", static_argnums=5)


def test_a_jitted_functions_own_static_arguments_are_static_without_being_told() -> None:
    x = jnp.ones((4, 6))
    by_name = jax.jit(lambda a, w, n: (a @ w) * n, static_argnames="n")
    w = jnp.ones((6, 2))
    traced = superopt.trace(by_name, x, w, 3)
    assert traced.static_args == {2: 3}
    assert len(traced.program.inputs) == 2
    # Told again, or told of another one too, the positions add up.
    assert superopt.trace(by_name, x, w, 3, static_argnums=2).static_args == {2: 3}
    reshape = jax.jit(lambda a, shape, k: a.reshape(shape) * k, static_argnums=(1, -1))
    assert superopt.trace(reshape, x, (6, 4), 2).static_argnums == (1, 2)
    assert superopt.trace(reshape, x, (6, 4), 2, static_argnums=0).static_argnums == (0, 1, 2)
    # A plain function's arguments are all arrays unless told.
    assert superopt.trace(lambda a, b: a @ b.T, x, x).static_argnums == ()


def test_multiple_outputs_and_shared_subterms() -> None:
    def fn(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        e = jnp.exp(x)
        return e, e + 1.0, e

    rt = roundtrip(fn, jnp.arange(3.0))
    program = rt.traced.program
    assert len(program.outputs) == 3 and program.outputs[0] is program.outputs[2]
    assert program.count_ops()["exp"] == 1
    assert_tree_allclose(rt(jnp.arange(3.0)), fn(jnp.arange(3.0)))


def test_literals_and_constants() -> None:
    table = np.arange(6.0, dtype=np.float32).reshape(2, 3)

    def fn(x: jax.Array) -> jax.Array:
        return x * 2.5 + jnp.asarray(table) - 1.0

    x = jnp.ones((2, 3))
    program = superopt.trace(fn, x).program
    literals = {n.params["value"] for n in program.nodes() if n.op == "literal"}
    assert {2.5, 1.0} <= literals
    (const,) = [n for n in program.nodes() if n.op == "const"]
    np.testing.assert_array_equal(np.asarray(program.consts[const.params["key"]]), table)
    assert "consts[" in superopt.render(program)
    assert_tree_allclose(superopt.to_callable(program)(x)[0], fn(x))


def test_nested_jit_is_inlined() -> None:
    @jax.jit
    def inner(x: jax.Array) -> jax.Array:
        return jnp.tanh(x) * 3.0

    @jax.jit
    def outer(x: jax.Array) -> jax.Array:
        return inner(inner(x)) + 1.0

    rt = roundtrip(outer, jnp.linspace(-2, 2, 5))
    counts = rt.traced.program.count_ops()
    assert counts["tanh"] == 2 and "opaque" not in counts
    assert_tree_allclose(rt(jnp.linspace(-2, 2, 5)), outer(jnp.linspace(-2, 2, 5)))
    _grad_matches(outer, jnp.linspace(-2, 2, 5))


def test_jaxs_own_custom_rules_are_inlined_and_others_kept_with_their_rules() -> None:
    # jax.nn.relu and jax.nn.silu carry custom_jvp rules defined by JAX: their primals are
    # inlined, so rewrites see through them.
    def familiar(x: jax.Array) -> jax.Array:
        return jax.nn.relu(x) * jax.nn.silu(x)

    x = jnp.linspace(-3, 3, 7) + 0.1
    rt = roundtrip(familiar, x)
    assert "opaque" not in rt.traced.program.count_ops()
    assert_tree_allclose(rt(x), familiar(x))
    _grad_matches(familiar, x)

    # A straight-through estimator: round forward, identity backward. Its primal alone has
    # a zero gradient, so it must stay a call that carries its rule; likewise a custom_jvp
    # whose tangent is not the primal's derivative.
    @jax.custom_vjp
    def ste(x: jax.Array) -> jax.Array:
        return jnp.round(x)

    ste.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))

    @jax.custom_jvp
    def doubled(x: jax.Array) -> jax.Array:
        return jnp.sin(x)

    doubled.defjvp(lambda primals, tangents: (jnp.sin(primals[0]), 2.0 * tangents[0]))

    def fn(x: jax.Array) -> jax.Array:
        return ste(x) * jax.nn.relu(x) + doubled(x)

    rt = roundtrip(fn, x)
    counts = rt.traced.program.count_ops()
    assert counts["opaque"] == 2 and counts["max"] == 1
    assert_tree_allclose(rt(x), fn(x))
    _grad_matches(fn, x)
    expected = jax.nn.relu(x) + jnp.round(x) * (x > 0) + 2.0
    assert_tree_allclose(jax.grad(lambda x: rt(x).sum())(x), expected, what="gradient")


def _opaque_cases() -> list[tuple[str, Any, tuple[Any, ...], bool]]:
    key = jr.PRNGKey(0)
    x = jr.normal(key, (6,))
    img = jr.normal(key, (1, 2, 6, 6))
    kernel = jr.normal(jr.PRNGKey(1), (3, 2, 3, 3))

    def scan(x: jax.Array) -> jax.Array:
        return lax.scan(lambda c, v: (c * 0.9 + v, jnp.sin(c)), 0.0, x)[1]

    def while_loop(x: jax.Array) -> jax.Array:
        return lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1] * 1.1), (0, x))[1]

    def cond(x: jax.Array) -> jax.Array:
        return lax.cond(x.sum() > 0, jnp.sin, jnp.cos, x)

    def conv(img: jax.Array, kernel: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(img, kernel, (1, 1), "SAME")

    def reduce_window(img: jax.Array) -> jax.Array:
        return lax.reduce_window(img, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def scatter(x: jax.Array) -> jax.Array:
        return x.at[jnp.array([0, 2, 2])].add(jnp.tanh(x[:3]))

    # (name, fn, args, reverse-differentiable)
    return [
        ("scan", scan, (x,), True),
        ("while", while_loop, (x,), False),
        ("cond", cond, (x,), True),
        ("conv_general_dilated", conv, (img, kernel), True),
        ("reduce_window", reduce_window, (img,), True),
        ("scatter", scatter, (x,), True),
    ]


@pytest.mark.parametrize("name, fn, args, differentiable", _opaque_cases(),
                         ids=[c[0] for c in _opaque_cases()])  # fmt: skip
def test_opaque_primitives_round_trip(name: str, fn: Any, args: Any, differentiable: bool) -> None:
    rt = roundtrip(fn, *args)
    program = rt.traced.program
    opaque = [n for n in program.nodes() if n.op == "opaque"]
    assert opaque, f"{name} should be kept as an opaque node"
    assert name.split("_")[0] in " ".join(n.params["eqn"].primitive.name for n in opaque)
    assert_tree_allclose(rt(*args), fn(*args), rtol=1e-5, atol=1e-5)
    assert_tree_allclose(jax.jit(rt)(*args), jax.jit(fn)(*args), rtol=1e-5, atol=1e-5)
    if differentiable:
        _grad_matches(fn, *args, argnums=tuple(range(len(args))))


@pytest.mark.parametrize("make_key", [jr.PRNGKey, jr.key], ids=["raw_key", "typed_key"])
def test_prng_keys_pass_through_opaque_nodes(make_key: Any) -> None:
    # Dropout-style randomness: key values live only in opaque nodes.
    def dropout(key: jax.Array, x: jax.Array) -> jax.Array:
        return x * jr.bernoulli(key, 0.5, x.shape) / 0.5

    key, x = make_key(3), jnp.linspace(1.0, 2.0, 8)
    rt = roundtrip(dropout, key, x)
    assert_tree_allclose(rt(key, x), dropout(key, x))
    assert_tree_allclose(jax.jit(rt)(make_key(4), x), dropout(make_key(4), x))
    _grad_matches(dropout, key, x, argnums=(1,))
    assert superopt.ir.node_cost(rt.traced.program.outputs[0]).bytes > 0


def test_shape_dtype_struct_arguments_are_not_allocated() -> None:
    # A 64 GiB matmul traces abstractly.
    big = jax.ShapeDtypeStruct((131072, 131072), jnp.float32)
    traced = superopt.trace(lambda a, b: a @ b, big, big)
    (out,) = traced.program.outputs
    assert out.shape == (131072, 131072) and out.op == "dot_general"


def test_non_callable_is_a_trace_error() -> None:
    table = {"w": 1}
    with pytest.raises(superopt.TraceError, match=r"callable.*dict \{'w': 1\}"):
        superopt.trace(table, jnp.ones(3))


def test_a_string_leaf_used_as_an_array_is_a_trace_error_naming_it() -> None:
    # A string leaf is held static (eqx.filter_jit's rule): fine where the function reads
    # it as a Python value, named in the error where it needed an array.
    traced = superopt.trace(lambda x, cfg: x, jnp.ones(3), {"name": "relu"})
    assert [s.path for s in traced.static_leaves] == ["[1]['name']"]
    with pytest.raises(
        superopt.TraceError, match=r"\[1\]\['name'\] \(str\) static.*static_argnums"
    ):
        superopt.trace(lambda x, cfg: x * cfg["name"], jnp.ones(3), {"name": "relu"})


def test_failing_function_is_a_trace_error() -> None:
    def broken(x: jax.Array) -> jax.Array:
        return x @ jnp.ones((5, 2))

    with pytest.raises(superopt.TraceError, match="broken"):
        superopt.trace(broken, jnp.ones((2, 3)))


def test_flatten_args_checks_the_signature() -> None:
    def fn(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
        return x * p["s"]

    traced = superopt.trace(fn, jnp.ones((2, 3)), {"s": jnp.ones(())})
    leaves = traced.flatten_args((jnp.zeros((2, 3)), {"s": jnp.ones(())}))
    assert [np.shape(v) for v in leaves] == [(2, 3), ()]
    with pytest.raises(superopt.SignatureError, match=r"float32\[3, 2\].*float32\[2, 3\]"):
        traced.flatten_args((jnp.zeros((3, 2)), {"s": jnp.ones(())}))
    with pytest.raises(superopt.SignatureError, match="int32"):
        traced.flatten_args((jnp.zeros((2, 3), jnp.int32), {"s": jnp.ones(())}))
    with pytest.raises(superopt.SignatureError, match="structure"):
        traced.flatten_args((jnp.zeros((2, 3)), {"s": jnp.ones(()), "t": jnp.ones(())}))


def test_leaves_that_are_not_arrays_are_static() -> None:
    # eqx.filter_jit's rule: arrays (and, here, Python numbers) are traced, other leaves
    # (a function, a string) are closed over and checked on every call.
    def fn(x: jax.Array, scale: float, p: dict[str, Any]) -> jax.Array:
        return getattr(jnp, p["name"])(p["act"](x * p["w"]) * scale)

    x, w = jnp.linspace(-1.0, 1.0, 6), jnp.full(6, 0.5)
    p = {"act": jnp.tanh, "name": "sin", "w": w}
    rt = roundtrip(fn, x, 2.0, p, static_argnums=(1,))
    traced = rt.traced
    # Positions among the leaves of x and p; paths among all the arguments.
    assert [(s.index, s.path) for s in traced.static_leaves] == [
        (1, "[2]['act']"),
        (2, "[2]['name']"),
    ]
    assert [np.shape(a) for a in traced.flatten_args((x, 2.0, p))] == [(6,), (6,)]
    assert len(traced.program.inputs) == 2 and traced.program.count_ops()["tanh"] == 1
    assert_tree_allclose(rt(x, 2.0, p), fn(x, 2.0, p))
    grad = jax.grad(lambda w: rt(x, 2.0, {**p, "w": w}).sum())(w)
    assert_tree_allclose(grad, jax.grad(lambda w: fn(x, 2.0, {**p, "w": w}).sum())(w))
    with pytest.raises(superopt.SignatureError, match=r"argument \[2\]\['act'\] is .*sin"):
        rt(x, 2.0, {**p, "act": jnp.sin})
    with pytest.raises(superopt.SignatureError, match=r"argument \[2\]\['name'\] is str 'cos'"):
        rt(x, 2.0, {**p, "name": "cos"})


def test_x64_program_round_trips() -> None:
    # (jax.experimental.enable_x64 became jax.enable_x64 in this JAX.)
    with jax.enable_x64(True):
        x = jnp.linspace(0.0, 1.0, 5, dtype=jnp.float64)
        rt = roundtrip(lambda v: jnp.exp(v) / 3.0, x)
        assert rt.traced.program.outputs[0].dtype == np.float64
        assert_tree_allclose(rt(x), jnp.exp(x) / 3.0, rtol=1e-14, atol=0)


def _layer(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    h = jax.nn.standardize(x, axis=-1) * p["g"]
    q, k, v = h @ p["wq"], h @ p["wk"], h @ p["wv"]
    b, t, d = q.shape
    q, k, v = (z.reshape(b, t, 4, d // 4) for z in (q, k, v))
    a = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, d)
    x = x + a @ p["wo"]
    h = jax.nn.standardize(x, axis=-1) * p["g2"]
    return x + jax.nn.gelu(h @ p["w1"]) @ p["w2"]


def test_trace_and_codegen_of_a_transformer_is_fast() -> None:
    d = 64
    shapes = dict(g=(d,), g2=(d,), wq=(d, d), wk=(d, d), wv=(d, d), wo=(d, d),
                  w1=(d, 4 * d), w2=(4 * d, d))  # fmt: skip
    params = [{k: jnp.full(s, 0.01) for k, s in shapes.items()} for _ in range(12)]
    x = jnp.ones((2, 16, d))

    def model(x: jax.Array, ps: list[dict[str, jax.Array]]) -> jax.Array:
        # `* p["g"]` broadcasts (2, 16, 64) by (64,): a library-style implicit promotion.
        with jax.numpy_rank_promotion("allow"):
            for p in ps:
                x = _layer(x, p)
        return x

    start = time.perf_counter()
    traced = superopt.trace(model, x, params)
    superopt.to_callable(traced.program)
    elapsed = time.perf_counter() - start
    assert len(traced.program.nodes()) > 800
    assert elapsed < 2.0, f"trace + codegen took {elapsed:.2f} s"  # about 0.15 s alone


def test_typed_keys_made_by_known_ops_stay_opaque() -> None:
    # Splitting a typed key reshapes and slices key arrays: ops the IR models for numbers,
    # which must not take the key dtype for one.
    def split_use(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        k1, k2 = jr.split(key)
        return jr.uniform(k1, (3,)), k2

    key = jr.key(0)
    opt = superopt.optimize(split_use, key, cache=False)
    (u, k), (u0, k0) = opt(key), split_use(key)
    np.testing.assert_array_equal(u, u0)
    np.testing.assert_array_equal(jr.key_data(k), jr.key_data(k0))
    assert superopt.verify(jr.split, jr.split, key).ok
    assert not superopt.verify(jr.split, lambda k: jr.split(jr.fold_in(k, 1)), key).ok


def _chain_at(precision: Any) -> Any:
    def chain(a: jax.Array, b: jax.Array, v: jax.Array) -> jax.Array:
        return jnp.matmul(jnp.matmul(a, b, precision=precision), v, precision=precision)

    return chain


def test_a_dot_with_an_explicit_precision_is_rewritable_and_keeps_it() -> None:
    # The IR's dots carry their precision: a HIGHEST chain is two real dots that the
    # rules can reassociate, and no rewrite drops the precision (on GPU, HIGHEST vs TF32).
    a, v = jnp.ones((32, 32)), jnp.ones((32, 2))
    highest = ("HIGHEST", "HIGHEST")
    cases = ((None, None), (lax.Precision.DEFAULT, None), ("highest", highest),
             ((lax.Precision.HIGH, lax.Precision.HIGHEST), ("HIGH", "HIGHEST")))  # fmt: skip
    for precision, modelled in cases:
        traced = superopt.trace(_chain_at(precision), a, a, v)
        dots = [n for n in traced.program.nodes() if n.op == "dot_general"]
        assert len(dots) == 2 and all(d.params["precision"] == modelled for d in dots)
    program = superopt.trace(_chain_at("highest"), a, a, v).program
    found = search(program, rules=["dot_assoc"], cost_model="flops").candidates
    reassociated = [c for c in found if c.program.outputs[0].args[1].op == "dot_general"]
    assert reassociated, "dot_assoc did not fire on the HIGHEST chain"
    for cand in found:
        assert all(n.params["precision"] == highest
                   for n in cand.program.nodes() if n.op == "dot_general")  # fmt: skip
    opt = superopt.optimize(_chain_at(lax.Precision.HIGHEST), a, a, v, cost_model="flops",
                            cache=False)  # fmt: skip
    assert any("dot_assoc" in step.rule for step in opt.report.rewrites)
    assert str(jax.make_jaxpr(opt)(a, a, v)).count("HIGHEST") == 4  # two dots, two operands
    assert_tree_allclose(opt(a, a, v), _chain_at("highest")(a, a, v))


def test_a_dot_algorithm_stays_opaque() -> None:
    # A dot algorithm (operand and accumulation types) has no IR form: the dot stays an
    # opaque call that keeps it.
    a = jnp.ones((4, 4))
    preset = lax.DotAlgorithmPreset.F32_F32_F32
    traced = superopt.trace(lambda x, y: jnp.matmul(x, y, precision=preset), a, a)
    assert "dot_general" not in traced.program.count_ops()
    assert traced.program.count_ops()["opaque"] == 1


def test_bf16_products_accumulated_in_f32_are_a_default_dot() -> None:
    # `jax.nn.dot_product_attention` asks for BF16_BF16_F32 on bfloat16 inputs: what the
    # default dot of bfloat16 operands with a float32 result computes, so an IR dot.
    a = jnp.ones((4, 4), jnp.bfloat16)
    preset = lax.DotAlgorithmPreset.BF16_BF16_F32

    def dot(x, y):
        return jnp.matmul(x, y, precision=preset, preferred_element_type=jnp.float32)

    (node,) = [n for n in superopt.trace(dot, a, a).program.nodes() if n.op == "dot_general"]
    assert node.params["precision"] is None and node.dtype == jnp.float32
    # On float32 operands the algorithm rounds them to bfloat16: not the default.
    f32 = jnp.ones((4, 4))
    assert "dot_general" not in superopt.trace(dot, f32, f32).program.count_ops()
