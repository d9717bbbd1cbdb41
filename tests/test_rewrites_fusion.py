"""Fusion rules: each fires on the programs that admit it, and the rewrite is equal."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

import superopt
from rewrites import fusion
from superopt._codegen import to_callable

FAST = settings(max_examples=2, deadline=None, phases=(Phase.explicit, Phase.generate))
TOL = {"float32": (2e-4, 2e-4), "bfloat16": (5e-2, 1e-1)}


def _rewrite(fn, *args, rule):
    """Trace, find the rule's facts, apply them; the two callables and the facts."""
    program = superopt.trace(fn, *args).program
    facts = [rw for rw in fusion.find_rewrites(program) if rw.rule == rule]
    return to_callable(program), to_callable(fusion.apply(program, facts)), facts


def _check(fn, args, rule, dtype, n_facts=1, grad_argnums=()):
    ref, new, facts = _rewrite(fn, *args, rule=rule)
    assert len(facts) == n_facts, [f.rule for f in facts]
    rtol, atol = TOL[dtype]

    def values_and_grads(f):
        # One compilation per side: the outputs and every gradient together.
        def loss(*xs):
            return sum(jnp.sum(o.astype(jnp.float32) ** 2) for o in f(*xs))

        grads = jax.grad(loss, tuple(grad_argnums)) if grad_argnums else lambda *xs: ()
        return jax.jit(lambda *xs: (f(*xs), grads(*xs)))(*args)

    (out_new, g_new), (out_ref, g_ref) = values_and_grads(new), values_and_grads(ref)
    for a, b in zip(out_new, out_ref):
        np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=rtol, atol=atol)
    for a, b in zip(g_new, g_ref):
        np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=rtol, atol=atol * 10)
    return facts


def _optax_xent(h, w, labels):
    with jax.numpy_rank_promotion("allow"):
        return optax.softmax_cross_entropy_with_integer_labels(h @ w, labels)


def _optax_xent_bias_mean(h, w, labels, b):
    with jax.numpy_rank_promotion("allow"):
        return optax.softmax_cross_entropy_with_integer_labels(h @ w + b[None, :], labels).mean()


def _nn_xent(h, w, labels):
    logits = h @ w
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def _optax_one_hot(h, w, labels):
    return optax.softmax_cross_entropy(h @ w, jax.nn.one_hot(labels, w.shape[1]))


def _one_hot_bias_mean(h, w, labels, b):
    logits = h @ w + b[None, :]
    one_hot = jax.nn.one_hot(labels, w.shape[1], dtype=logits.dtype)
    return -(jax.nn.log_softmax(logits) * one_hot).sum(-1).mean()


def _one_hot_logsumexp(h, w, labels):
    logits = h @ w
    log_probs = logits - jax.nn.logsumexp(logits, -1, keepdims=True)
    return -(jax.nn.one_hot(labels, w.shape[1], dtype=logits.dtype) * log_probs).sum(-1)


def _optax_upcast(h, w, labels):
    # Mixed precision: low-precision weights, the loss of float32 logits.
    return optax.softmax_cross_entropy_with_integer_labels((h @ w).astype(jnp.float32), labels)


def _upcast_bias_mean(h, w, labels, b):
    logits = (h @ w).astype(jnp.float32) + b.astype(jnp.float32)[None, :]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _preferred_f32(h, w, labels):
    logits = jnp.dot(h, w, preferred_element_type=jnp.float32)
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def _one_hot_upcast(h, w, labels):
    logits = (h @ w).astype(jnp.float32)
    return optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, w.shape[1]))


# Each form of the loss: the function, whether it takes a bias, whether its labels are
# one-hot. A gathered label wraps Python-style from -V; a one-hot label outside [0, V) has
# an all-zero row, so its loss is 0, and so is the rewrite's.
XENT_FORMS = {
    "optax": (_optax_xent, False, False),
    "optax_bias": (_optax_xent_bias_mean, True, False),
    "nn": (_nn_xent, False, False),
    "one_hot_optax": (_optax_one_hot, False, True),
    "one_hot_bias_mean": (_one_hot_bias_mean, True, True),
    "one_hot_logsumexp": (_one_hot_logsumexp, False, True),
    "optax_upcast": (_optax_upcast, False, False),
    "upcast_bias_mean": (_upcast_bias_mean, True, False),
    "one_hot_upcast": (_one_hot_upcast, False, True),
    "preferred_f32": (_preferred_f32, False, False),
}


# One row traces to an unbatched gather (JAX drops the batch dimension); not matched.
# The explicit example is the mixed-precision form (a float32 loss of bfloat16 weights).
@settings(FAST, max_examples=4)
@example(n=4, d=3, v=17, form="upcast_bias_mean", dtype="bfloat16", seed=0)
@given(
    n=st.integers(2, 8),
    d=st.integers(1, 8),
    v=st.integers(2, 40),
    form=st.sampled_from(sorted(XENT_FORMS)),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 999),
)
def test_chunked_xent_rule(n, d, v, form, dtype, seed):
    fn, bias, one_hot = XENT_FORMS[form]
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    h = jax.random.normal(k[0], (n, d)).astype(dtype)
    w = jax.random.normal(k[1], (d, v)).astype(dtype)
    labels = jax.random.randint(k[2], (n,), -v - 2 if one_hot else -v, v + 2 if one_hot else v)
    args = (h, w, labels, jax.random.normal(k[3], (v,)).astype(dtype)) if bias else (h, w, labels)
    grads = (0, 1, 3) if bias else (0, 1)
    (fact,) = _check(fn, args, "chunked_xent", dtype, grad_argnums=grads)
    (fused,) = [n for n in superopt.ir.toposort([fact.after]) if n.op == "chunked_xent"]
    assert fused.args[2].op == "input" and len(fused.args) == (4 if bias else 3)
    # A bfloat16 product upcast before the loss keeps a float32 loss.
    upcast = ("upcast" in form or "f32" in form) and dtype == "bfloat16"
    assert fused.dtype == ("float32" if upcast else dtype)
    assert fused.params.get("loss_dtype") == (jnp.float32 if upcast else None)


def test_chunked_xent_rule_needs_a_one_hot_of_the_labels():
    h, w, labels = jnp.ones((4, 3)), jnp.ones((3, 10)), jnp.zeros(4, jnp.int32)

    def smoothed(h, w, labels):  # label smoothing: not a one-hot, not a cross-entropy of labels
        target = optax.smooth_labels(jax.nn.one_hot(labels, 10), 0.1)
        return optax.softmax_cross_entropy(h @ w, target)

    def shifted(h, w, labels):  # the one-hot of other columns
        target = jax.nn.one_hot(labels, 10)[:, ::-1]
        return optax.softmax_cross_entropy(h @ w, target)

    for fn in (smoothed, shifted):
        assert _rewrite(fn, h, w, labels, rule="chunked_xent")[2] == []


def test_chunked_xent_rule_leaves_logits_rounded_after_the_bias():
    # Upcast after a bfloat16 bias: the logits are rounded to bfloat16 before the upcast
    # (XLA folds an upcast into a product, not into a sum), and the fused op's float32
    # logits are not within a float32 loss's tolerance of that.
    h, w = jnp.ones((4, 3), jnp.bfloat16), jnp.ones((3, 10), jnp.bfloat16)
    b, labels = jnp.ones(10, jnp.bfloat16), jnp.zeros(4, jnp.int32)

    def rounded_twice(h, w, labels, b):
        logits = (h @ w + b[None, :]).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    assert _rewrite(rounded_twice, h, w, labels, b, rule="chunked_xent")[2] == []


def test_chunked_xent_rule_needs_the_same_logits():
    h, w, labels = jnp.ones((4, 3)), jnp.ones((3, 10)), jnp.zeros(4, jnp.int32)

    def mixed(h, w, labels):
        other = (h * 2.0) @ w  # the label logit comes from different logits
        picked = jnp.take_along_axis(other, labels[:, None], axis=-1)[:, 0]
        return jax.nn.logsumexp(h @ w, axis=-1) - picked

    assert _rewrite(mixed, h, w, labels, rule="chunked_xent")[2] == []


def _heads(form, x, w, heads):
    """q, k, v `[B, T, H, D]` from one projection `x @ w` of width 3·H·D, as models write it."""
    b, t, _ = x.shape
    width = w.shape[1] // 3
    if form == "split":
        parts = jnp.split(x @ w, 3, axis=-1)
    elif form == "slices":
        y = x @ w
        parts = [y[..., i * width : (i + 1) * width] for i in range(3)]
    else:  # three projections
        parts = [x @ w[:, i * width : (i + 1) * width] for i in range(3)]
    return [z.reshape(b, t, heads, width // heads) for z in parts]


# The attention's operands start at the reshape that splits the projection into heads.
@FAST
@given(
    b=st.integers(1, 2),
    t=st.integers(2, 10),
    heads=st.integers(1, 3),
    d=st.integers(2, 6),
    form=st.sampled_from(["split", "slices", "projections"]),
    causal=st.booleans(),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 999),
)
def test_flash_attention_rule_on_heads_of_a_projection(b, t, heads, d, form, causal, dtype, seed):
    k = jax.random.split(jax.random.PRNGKey(seed), 2)
    x = jax.random.normal(k[0], (b, t, 8)).astype(dtype)
    w = (jax.random.normal(k[1], (8, 3 * heads * d)) / 3).astype(dtype)

    def fn(x, w):
        q, kk, v = _heads(form, x, w, heads)
        return jax.nn.dot_product_attention(q, kk, v, is_causal=causal)

    (fact,) = _check(fn, (x, w), "flash_attention", dtype, grad_argnums=(0, 1))
    assert any(n.op == "flash_attention" for n in superopt.ir.toposort([fact.after]))


# Size-1 sequence or head dimensions carry no label, so the layout is ambiguous: the rule
# needs them > 1 (batch and head counts may be 1).
def _dpa(causal):
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal)


# bfloat16 always runs: its dots carry the algorithm BF16_BF16_F32 (read as default).
@FAST
@given(
    b=st.integers(1, 2),
    t=st.integers(2, 12),
    h=st.integers(1, 3),
    d=st.integers(2, 8),
    causal=st.booleans(),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 999),
)
@example(b=1, t=9, h=2, d=4, causal=True, dtype="bfloat16", seed=1)
def test_flash_attention_rule_on_dot_product_attention(b, t, h, d, causal, dtype, seed):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    q, kk, v = (jax.random.normal(key, (b, t, h, d)).astype(dtype) for key in k)
    facts = _check(_dpa(causal), (q, kk, v), "flash_attention", dtype, grad_argnums=(0, 1, 2))
    fused = facts[0].after.args[0]
    assert fused.op == "flash_attention" and fused.params["causal"] == causal
    assert len(fused.args) == 3  # a causal mask becomes a flag, not a materialized mask


@FAST
@given(
    t=st.integers(2, 12),
    s=st.integers(2, 12),
    d=st.integers(2, 6),
    e=st.integers(2, 6),
    masked=st.booleans(),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 999),
)
def test_flash_attention_rule_on_hand_written_softmax(t, s, d, e, masked, dtype, seed):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(k[0], (t, d)).astype(dtype)
    kk = jax.random.normal(k[1], (s, d)).astype(dtype)
    v = jax.random.normal(k[2], (s, e)).astype(dtype)
    mask = jax.random.bernoulli(k[3], 0.7, (t, s))
    if masked:

        def fn(q, k, v, m):
            return jax.nn.softmax(jnp.where(m, q @ k.T * 0.5, -1e9)) @ v

        _check(fn, (q, kk, v, mask), "flash_attention", dtype, grad_argnums=(0, 1, 2))
    else:

        def fn(q, k, v):
            return jax.nn.softmax((q @ k.T) / jnp.sqrt(float(d)), axis=-1) @ v

        _check(fn, (q, kk, v), "flash_attention", dtype, grad_argnums=(0, 1, 2))


def test_flash_attention_rule_with_a_padding_mask():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    q, kk, v = (jax.random.normal(key, (2, 16, 2, 8)) for key in k[:3])
    mask = jax.random.bernoulli(k[3], 0.5, (2, 2, 16, 16))
    fn = lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m)  # noqa: E731
    facts = _check(fn, (q, kk, v, mask), "flash_attention", "float32", grad_argnums=(0,))
    assert len(facts[0].after.args[0].args) == 4


def test_softmax_over_the_wrong_axis_is_not_attention():
    q = jnp.ones((8, 4))
    fn = lambda q, k, v: jax.nn.softmax(q @ k.T, axis=0) @ v  # noqa: E731
    assert _rewrite(fn, q, q, q, rule="flash_attention")[2] == []


@FAST
@given(
    count=st.integers(2, 6),
    m=st.integers(1, 6),
    kdim=st.integers(1, 6),
    n=st.integers(1, 6),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 999),
)
def test_batch_dots_rule(count, m, kdim, n, dtype, seed):
    k = jax.random.split(jax.random.PRNGKey(seed), 2)
    xs = jax.random.normal(k[0], (count, m, kdim)).astype(dtype)
    ws = jax.random.normal(k[1], (count, kdim, n)).astype(dtype)
    fn = lambda xs, ws: [xs[i] @ ws[i] for i in range(count)]  # noqa: E731
    facts = _check(fn, (xs, ws), "batch_dots", dtype, n_facts=count, grad_argnums=(0, 1))
    assert len({id(f.after.args[0].args[0]) for f in facts}) == 1  # one shared batched dot


def test_dependent_dots_are_not_batched():
    x = jnp.ones((4, 4))
    fn = lambda x, w: (x @ w) @ w  # noqa: E731
    assert _rewrite(fn, x, x, rule="batch_dots")[2] == []


@FAST
@given(
    widths=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    m=st.integers(1, 6),
    kdim=st.integers(1, 6),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 999),
)
def test_concat_shared_lhs_rule(widths, m, kdim, dtype, seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(widths) + 1)
    x = jax.random.normal(keys[0], (m, kdim)).astype(dtype)
    ws = [jax.random.normal(key, (kdim, w)).astype(dtype) for key, w in zip(keys[1:], widths)]
    fn = lambda x, *ws: [jnp.tanh(x @ w) for w in ws]  # noqa: E731
    _check(fn, (x, *ws), "concat_shared_lhs", dtype, n_facts=len(widths), grad_argnums=(0, 1))


def test_facts_join_the_matched_e_class():
    from superopt.ir._egraph import EGraphView, encode

    h, w, labels = jnp.ones((4, 3)), jnp.ones((3, 10)), jnp.zeros(4, jnp.int32)
    program = superopt.trace(_optax_xent, h, w, labels).program
    facts = fusion.find_rewrites(program)
    egraph, _ = encode(program)
    assert fusion.add_to_egraph(egraph, facts) == 1
    view = EGraphView.of(egraph)
    joined = [
        c for c, ens in view.classes.items() if {"sub", "chunked_xent"} <= {e.op for e in ens}
    ]
    assert len(joined) == 1


# Precisions as `jnp.matmul` takes them, with the IR's form of each.
PRECISIONS = {None: None, "highest": ("HIGHEST", "HIGHEST"), "high": ("HIGH", "HIGH")}


@settings(max_examples=6, deadline=None)
@given(
    precisions=st.lists(st.sampled_from(sorted(PRECISIONS, key=str)), min_size=2, max_size=5),
    seed=st.integers(0, 999),
)
def test_batch_dots_keeps_each_precision_apart(precisions, seed):
    # Dots of different precisions are never batched together, and a batched dot computes
    # at the precision of the dots it replaces.
    k = jax.random.split(jax.random.PRNGKey(seed), 2)
    xs, ws = jax.random.normal(k[0], (len(precisions), 3, 4)), jax.random.normal(k[1], (4, 5))

    def fn(xs, w):
        return [jnp.matmul(xs[i], w, precision=p) for i, p in enumerate(precisions)]

    ref, new, facts = _rewrite(fn, xs, ws, rule="batch_dots")
    for fact in facts:
        batched = fact.after.args[0].args[0]
        assert batched.op == "dot_general"
        assert batched.params["precision"] == fact.before.params["precision"]
    expected = sum(n for n in map(precisions.count, set(precisions)) if n >= 2)
    assert len(facts) == expected
    for a, b in zip(new(xs, ws), ref(xs, ws)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


def test_batch_dots_of_highest_dots_stay_highest():
    x, w = jnp.ones((4, 4)), jnp.ones((4, 4))
    mixed = lambda x, w: (jnp.matmul(x, w, precision="highest"), x @ (w * 2.0))  # noqa: E731
    assert _rewrite(mixed, x, w, rule="batch_dots")[2] == []

    def both(x, w):
        return jnp.matmul(x, w, precision="highest"), jnp.matmul(x * 2.0, w, precision="highest")

    program = superopt.trace(both, x, w).program
    facts = [rw for rw in fusion.find_rewrites(program) if rw.rule == "batch_dots"]
    assert len(facts) == 2
    batched = fusion.apply(program, facts)
    assert batched.count_ops()["dot_general"] == 1
    jaxpr = str(jax.make_jaxpr(to_callable(batched))(x, w))
    assert jaxpr.count("dot_general") == 1 and jaxpr.count("HIGHEST") == 2


def test_concat_shared_lhs_keeps_each_precision_apart():
    x, w = jnp.ones((4, 3)), jnp.ones((3, 5))

    def fn(x, w):
        return [jnp.matmul(x, w * s, precision=p) for s, p in
                ((1.0, "highest"), (2.0, None), (3.0, "highest"), (4.0, None))]  # fmt: skip

    _, new, facts = _rewrite(fn, x, w, rule="concat_shared_lhs")
    assert len(facts) == 4
    for fact in facts:
        assert fact.after.args[0].params["precision"] == fact.before.params["precision"]
    assert str(jax.make_jaxpr(new)(x, w)).count("HIGHEST") == 2  # one dot of each precision


def _hand_attention(p_scores, p_out):
    def fn(q, k, v):
        scores = jnp.matmul(q, k.T, precision=p_scores) / 2.0
        return jnp.matmul(jax.nn.softmax(scores, axis=-1), v, precision=p_out)

    return fn


def _precise_xent(precision):
    def fn(h, w, labels):
        logits = jnp.matmul(h, w, precision=precision)
        picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
        return jax.nn.logsumexp(logits, axis=-1) - picked

    return fn


def test_fused_ops_do_not_replace_dots_with_an_explicit_precision():
    # The fused ops compute at the default precision: a dot that names another is kept.
    q = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
    for p_scores, p_out in ((None, None), ("highest", None), (None, "highest"), ("high",) * 2):
        facts = _rewrite(_hand_attention(p_scores, p_out), q, q, q, rule="flash_attention")[2]
        assert len(facts) == (p_scores is None and p_out is None), (p_scores, p_out)
    h, w, labels = jnp.ones((4, 3)), jnp.ones((3, 10)), jnp.zeros(4, jnp.int32)
    for precision in (None, "highest", "high"):
        facts = _rewrite(_precise_xent(precision), h, w, labels, rule="chunked_xent")[2]
        assert len(facts) == (precision is None), precision
