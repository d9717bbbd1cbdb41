"""Tiling: one fused e-node per tile size in one e-class, every size equal in value."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import superopt
from rewrites import fusion, tiling
from superopt._codegen import to_callable

FAST = settings(max_examples=2, deadline=None, phases=(Phase.explicit, Phase.generate))


def test_tile_sizes():
    assert tiling.tile_sizes(1000) == (64, 128, 256, 512, 1000)
    assert tiling.tile_sizes(256) == (64, 128, 256)
    assert tiling.tile_sizes(40) == (40,)
    assert tiling.tile_sizes(4096, minimum=128, maximum=512) == (128, 256, 512, 4096)


def _xent(h, w, labels):
    return optax.softmax_cross_entropy_with_integer_labels(h @ w, labels)


def _one_hot_xent(h, w, labels):
    return optax.softmax_cross_entropy(h @ w, jax.nn.one_hot(labels, w.shape[1]))


# The one-hot form's fused op sits under a negation and a select (labels out of range):
# it is tiled there all the same.
@FAST
@given(
    n=st.integers(2, 6),
    v=st.integers(65, 300),
    one_hot=st.booleans(),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 999),
)
def test_every_chunk_size_is_equal(n, v, one_hot, dtype, seed):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    h = jax.random.normal(k[0], (n, 8)).astype(dtype)
    w = jax.random.normal(k[1], (8, v)).astype(dtype)
    labels = jax.random.randint(k[2], (n,), -2 if one_hot else 0, v + 2 if one_hot else v)
    program = superopt.trace(_one_hot_xent if one_hot else _xent, h, w, labels).program
    facts = tiling.tile_rewrites(fusion.find_rewrites(program))
    assert [f.rule for f in facts] == [f"chunked_xent[chunk={t}]" for t in tiling.tile_sizes(v)]
    (want,) = to_callable(program)(h, w, labels)
    tol = 2e-4 if dtype == "float32" else 6e-2
    for fact in facts:
        (got,) = to_callable(fusion.apply(program, [fact]))(h, w, labels)
        np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=tol, atol=tol)


@FAST
@given(
    s=st.integers(65, 200),
    causal=st.booleans(),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 999),
)
def test_every_key_block_is_equal_in_value_and_gradient(s, causal, dtype, seed):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    q, kk, v = (jax.random.normal(key, (1, s, 2, 4)).astype(dtype) for key in k)
    fn = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    program = superopt.trace(fn, q, kk, v).program
    facts = tiling.tile_rewrites(fusion.find_rewrites(program))
    assert len(facts) == len(tiling.tile_sizes(s)) >= 2
    ref = to_callable(program)
    tol = 2e-4 if dtype == "float32" else 6e-2

    def value_and_grad(f):
        # One compilation per program: the value and its gradient together.
        def loss(q):
            out = f(q, kk, v)[0]
            return jnp.sum(out.astype(jnp.float32) ** 2), out

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(q)

    (_, want), g_ref = value_and_grad(ref)
    for fact in facts:
        (_, got), g = value_and_grad(to_callable(fusion.apply(program, [fact])))
        np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=tol, atol=tol)
        np.testing.assert_allclose(np.float32(g), np.float32(g_ref), rtol=tol, atol=10 * tol)


def test_tile_sizes_share_one_e_class():
    from superopt.ir._egraph import EGraphView, encode

    h, w, labels = jnp.ones((4, 8)), jnp.ones((8, 300)), jnp.zeros(4, jnp.int32)
    program = superopt.trace(_xent, h, w, labels).program
    egraph, _ = encode(program)
    fusion.add_to_egraph(egraph, tiling.tile_rewrites(fusion.find_rewrites(program)))
    view = EGraphView.of(egraph)
    chunks = [
        sorted(e.params["chunk"] for e in ens if e.op == "chunked_xent")
        for ens in view.classes.values()
    ]
    assert [64, 128, 256, 300] in chunks


def test_non_tiled_facts_pass_through():
    x = jnp.ones((4, 4))
    program = superopt.trace(lambda a, b: (a @ b, b @ a), x, x + 1).program
    facts = fusion.find_rewrites(program)
    assert facts and tiling.tile_rewrites(facts) == facts


# ---------------------------------------------------------------- superopt.variants


def _values(variants, op, key):
    return {n.params[key] for v in variants for n in v.program.nodes() if n.op == op}


def test_variants_batch_a_loop_of_64_matmuls():
    xs = [jnp.full((16, 16), float(i)) for i in range(64)]
    ws = [jnp.full((16, 16), 1.0 / (i + 1)) for i in range(64)]
    vs = superopt.variants(lambda xs, ws: [x @ w for x, w in zip(xs, ws)], xs, ws, limit=20)
    batched = [v for v in vs if v.program.count_ops().get("dot_general") == 1]
    assert batched
    dot = next(n for n in batched[0].program.nodes() if n.op == "dot_general")
    assert dot.shape == (64, 16, 16)
    np.testing.assert_allclose(batched[0].fn(xs, ws)[5], xs[5] @ ws[5], rtol=1e-5)


def test_variants_chunk_a_32k_vocabulary_cross_entropy():
    h, w, labels = jnp.ones((8, 32)), jnp.ones((32, 32768)), jnp.zeros(8, jnp.int32)
    fn = lambda h, w, labels: _xent(h, w, labels).mean()  # noqa: E731
    vs = superopt.variants(fn, h, w, labels, limit=40)
    chunks = _values(vs, "chunked_xent", "chunk")
    assert {2048, 4096} <= chunks and len(chunks) >= 4
    fused = next(v for v in vs if "chunked_xent" in v.source)
    assert "fused.chunked_xent(" in fused.source


def test_variants_tile_attention_at_sequence_4096():
    q = jnp.ones((1, 4096, 1, 8))
    fn = lambda q, k, v: jax.nn.dot_product_attention(q, k, v)  # noqa: E731
    vs = superopt.variants(fn, q, q, q, limit=40)
    blocks = _values(vs, "flash_attention", "block")
    assert {128, 256} <= blocks and len(blocks) >= 4
