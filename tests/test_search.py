"""The search driver: variants of the issue's cases, limits, and the transformer budget."""

import time

import jax
import jax.numpy as jnp
import numpy as np

import superopt
from superopt._search import search


def _has(variants, op_counts):
    return any(
        all(v.program.count_ops().get(op, 0) == n for op, n in op_counts.items()) for v in variants
    )


def test_matrix_chain_reassociates():
    n = 1024
    a, b, x = np.ones((n, n), np.float32), np.ones((n, n), np.float32), np.ones(n, np.float32)
    vs = superopt.variants(lambda a, b, x: (a @ b) @ x, a, b, x, limit=10)
    best = vs[0]
    assert "dot_assoc" in best.rules
    assert all(len(n.shape) <= 1 for n in best.program.nodes() if n.op == "dot_general")


def test_sum_of_product_and_scalar_and_distributivity():
    a, b, c = (np.random.default_rng(i).normal(size=(32, 32)).astype(np.float32) for i in range(3))
    # At 32x32 one kernel launch more outweighs the saved product; at 128 it does not.
    a2, b2 = (np.random.default_rng(i).normal(size=(128, 128)).astype(np.float32) for i in (0, 1))
    vs = superopt.variants(lambda a, b: jnp.sum(a @ b), a2, b2)
    assert "sum_of_dot" in vs[0].rules
    np.testing.assert_allclose(vs[0].fn(a2, b2), jnp.sum(a2 @ b2), rtol=1e-3)
    small = np.ones((32, 2), np.float32)
    vs = superopt.variants(lambda s, a, b: (s * a) @ b, jnp.float32(3), a, small)
    assert "scalar_out_of_dot" in vs[0].rules
    np.testing.assert_allclose(vs[0].fn(jnp.float32(3), a, small), (3 * a) @ small, rtol=1e-4)
    vs = superopt.variants(lambda a, b, c: a @ b + a @ c, a, b, c)
    assert "dot_factor_left" in vs[0].rules
    assert vs[0].program.count_ops()["dot_general"] == 1


def test_reference_kept_and_stats():
    res = search(superopt.trace(lambda x: jnp.tanh(x) + 1.0, np.ones(4, np.float32)).program)
    assert any(c.label == "reference" for c in res.candidates)
    assert res.stats["stop_reason"] == "saturated"


def _layer(x, p):
    h = jax.nn.standardize(x, axis=-1) * p["g"][None, None, :]
    q, k, v = h @ p["wq"], h @ p["wk"], h @ p["wv"]
    b, t, d = q.shape
    q, k, v = (z.reshape(b, t, 4, d // 4) for z in (q, k, v))
    a = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, d)
    x = x + a @ p["wo"]
    h = jax.nn.standardize(x, axis=-1) * p["g2"][None, None, :]
    return x + jax.nn.gelu(h @ p["w1"]) @ p["w2"]


def test_transformer_saturation_budget():
    d = 64
    shapes = dict(g=(d,), g2=(d,), wq=(d, d), wk=(d, d), wv=(d, d), wo=(d, d), w1=(d, 4 * d),
                  w2=(4 * d, d))  # fmt: skip
    ps = [{k: np.full(s, 0.01, np.float32) for k, s in shapes.items()} for _ in range(12)]
    x = np.ones((2, 16, d), np.float32)

    def model(x, ps):
        for p in ps:
            x = _layer(x, p)
        return x

    prog = superopt.trace(model, x, ps).program
    assert len(prog.nodes()) > 1000
    start = time.perf_counter()
    res = search(prog, rules=["algebra"], top_k=1)
    assert res.stats["seconds"] < 5.0, res.stats
    assert res.stats["nodes"] < 200_000
    assert time.perf_counter() - start < 30
    # The whole search (every family, extraction, candidates, rule naming) stays fast too;
    # about a second on a quiet machine, so 10 s leaves room for a loaded one.
    start = time.perf_counter()
    res = search(prog)
    assert time.perf_counter() - start < 10.0, res.stats
    assert res.stats["fusion_facts"] >= 12  # one attention per layer, at several block sizes
    assert res.candidates[0].rewrites


def test_rules_are_named_in_the_direction_they_rewrite():
    # `dot_expand` also connects the two forms (run backwards); the name must be the rule
    # that turns the reference into the candidate.
    a, b, c = (np.ones((16, 16), np.float32) for _ in range(3))
    prog = superopt.trace(lambda a, b, c: a @ b + a @ c, a, b, c).program
    res = search(prog, rules=["algebra"])
    assert [s.rule for s in res.candidates[0].rewrites] == ["dot_factor_left"]


def test_python_fusion_facts_and_shared_extraction():
    # 16 independent dots, stacked: `batch_dots` facts plus the stack-of-items fact give
    # one batched dot, which only a whole-program (DAG) choice can see paying off.
    xs = [np.ones((8, 8), np.float32) for _ in range(16)]
    ws = [np.ones((8, 8), np.float32) for _ in range(16)]
    prog = superopt.trace(lambda xs, ws: jnp.stack([x @ w for x, w in zip(xs, ws)]), xs, ws)
    res = search(prog.program, rules=["fusion"])
    best = res.candidates[0]
    assert best.program.count_ops().get("dot_general") == 1
    assert [s.rule for s in best.rewrites] == ["batch_dots"]
    assert res.stats["fusion_facts"] == 17


def test_rule_selection_errors_and_families():
    from superopt._errors import SearchError
    from superopt._rules import rule_families, select_rules

    families = rule_families()
    assert {"algebra", "fusion"} <= set(families)
    sel = select_rules(["dot_assoc", "batch_dots"])
    assert list(sel.egg) == ["dot_assoc"] and [r.name for r in sel.fusion] == ["batch_dots"]
    assert "dot_assoc" in sel.expansive
    try:
        select_rules(["no_such_rule"])
    except SearchError as err:
        assert "no_such_rule" in str(err)
    else:
        raise AssertionError("an unknown rule name must raise")


def test_a_whole_program_model_reranks_the_extracted_candidates():

    from costmodel.analytical import AnalyticalCostModel
    from costmodel.features import FEATURE_INDEX

    class PrefersChunk2048(AnalyticalCostModel):
        """Per-node costs of the roofline, but whole programs scored by their chunk:
        2048 best, the farther from it the slower."""

        def score_programs(self, graphs):
            col = FEATURE_INDEX["log_tile0"]
            chunks = [np.expm1(g.node_feat[:, col].max()) for g in graphs]
            return np.asarray([1.0 + abs(np.log2(max(c, 1.0) / 2048.0)) for c in chunks])

    h, w = np.ones((64, 32), np.float32), np.ones((32, 8192), np.float32)
    labels = np.zeros(64, np.int32)

    def loss(h, w, labels):
        logits = h @ w
        return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[:, None], 1)[:, 0]

    program = superopt.trace(loss, h, w, labels).program
    model = PrefersChunk2048()
    best = search(program, cost_model=model).candidates[0]
    chunks = [n.params["chunk"] for n in best.program.nodes() if n.op == "chunked_xent"]
    assert chunks == [2048] and abs(best.predicted_s - 1.0) < 1e-5


def test_a_learned_ranking_of_unfamiliar_programs_says_it_is_rough():
    # No program the shipped networks were trained on has erf; with rewrites to rank, the
    # search's note says so. The roofline has no such doubts, nor does the learned model
    # on a matrix chain like those in training.
    args = (jnp.ones((512, 512)), jnp.ones((512, 512)), jnp.ones((512, 4)))
    erf = superopt.trace(lambda a, b, v: jax.scipy.special.erf((a @ b) @ v), *args).program
    note = search(erf, cost_model="learned").note
    assert "dot_assoc" in note and "has not learned the cost of erf" in note
    assert "timing candidates (budget > 0) settles it" in note
    assert "learned cost model" not in search(erf, cost_model="analytical").note
    # erf over a 512 x 512 operand: the three networks scatter, so the prediction leans
    # on the fitted roofline, and the note says that too.
    wide = superopt.trace(lambda a, b, v: (jax.scipy.special.erf(a) @ b) @ v, *args).program
    note = search(wide, cost_model="learned").note
    assert "has networks that disagree by" in note and "leans on the roofline" in note
    chain = superopt.trace(lambda a, b, v: (a @ b) @ v, *args).program
    assert "learned cost model" not in search(chain, cost_model="learned").note
