"""The e-graph language: encode -> decode round trips, rank facts, the generic `op` path."""

from __future__ import annotations

import hypothesis.strategies as hst
import jax.numpy as jnp
import numpy as np
from egglog import EGraph, Vec, i64, run, set_
from hypothesis import given, settings
from jax import lax

import superopt
import superopt.testing as sot
from superopt._codegen import evaluate
from superopt._extract import extract
from superopt.ir import Node, Params, Program, make
from superopt.ir._egraph import (
    MATMUL,
    RANK_ANALYSIS,
    EGraphView,
    Tensor,
    TextEncoder,
    _dot_params,
    _encode_node,
    decode,
    dn_key,
    dot_pref,
    encode,
    let_name,
    rank,
    tlist,
)
from superopt.ir._ops import PRECISIONS


def _roundtrip(program: Program) -> Program:
    egraph, _ = encode(program)
    view = EGraphView.of(egraph)
    ex = extract(view)
    return decode(view, ex.best, program)


@settings(max_examples=25, deadline=None)
@given(case=sot.programs(max_ops=6, max_outputs=2))
def test_encode_decode_roundtrip_keeps_values(case):
    args = case.arrays()
    program = superopt.trace(case.fn, *args).program
    back = _roundtrip(program)
    # With no rules the e-graph holds only the program: it must come back node for node.
    assert back.canonical_key() == program.canonical_key(), case
    for r, o in zip(evaluate(program, *args), evaluate(back, *args)):
        np.testing.assert_array_equal(np.asarray(r), np.asarray(o))


def test_every_node_has_a_named_class_with_its_rank():
    f = lambda a, b: (jnp.sum(a @ b, axis=0), a.T)  # noqa: E731
    args = (np.ones((3, 4), np.float32), np.ones((4, 5), np.float32))
    program = superopt.trace(f, *args).program
    egraph, enc = encode(program)
    view = EGraphView.of(egraph)
    for i, node in enumerate(program.nodes()):
        cid = view.lets[let_name(i)]
        assert view.types[cid] == (node.shape, node.dtype)
        # The rank fact of every node is in the e-graph.
        enc.run([f"(check (= ({enc._rank} ${let_name(i)}) {node.ndim}))"])


def test_rank_analysis_types_rule_made_terms():
    egraph = EGraph()
    a, b, v = (egraph.let(n, Tensor.leaf(n)) for n in ("a", "b", "v"))
    egraph.register(set_(rank(a)).to(i64(2)), set_(rank(b)).to(i64(2)), set_(rank(v)).to(i64(1)))
    mm = Tensor.dot(a, b, MATMUL, "None")
    mv = Tensor.dot(mm, v, MATMUL, "None")
    total = Tensor.reduce("reduce_sum", Tensor.unary("exp", mv), Vec[i64](i64(0)))
    tr = Tensor.transpose(Tensor.unary("neg", mm), Vec[i64](i64(1), i64(0)))
    egraph.register(total, tr)
    egraph.run(run(RANK_ANALYSIS).saturate())
    egraph.check(rank(mm) == i64(2), rank(mv) == i64(1), rank(total) == i64(0))
    egraph.check(rank(tr) == i64(2))
    # Nothing is guessed: a leaf whose rank was never set has none.
    egraph.check_fail(rank(Tensor.leaf("unknown")) == i64(0))


def test_generic_op_path_round_trips():
    # `integer_pow` and `cumsum` have no typed constructor: they go through Tensor.op.
    f = lambda x: jnp.cumsum(x**3, axis=0)  # noqa: E731
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    program = superopt.trace(f, x).program
    ops = {n.op for n in program.nodes()}
    assert "integer_pow" in ops
    egraph, _ = encode(program)
    view = EGraphView.of(egraph)
    generic = [e for es in view.classes.values() for e in es if e.op == "integer_pow"]
    assert generic and generic[0].params["y"] == 3
    back = _roundtrip(program)
    np.testing.assert_allclose(evaluate(back, x)[0], f(x))


def test_text_encoder_escapes_strings_and_shares_nodes():
    x = Node("input", (), Params(index=0), (2,), np.dtype("float32"))
    y = make("integer_pow", x, y=2)
    egraph = EGraph()
    enc = TextEncoder(egraph)
    first = enc.add([y])
    assert enc.add([y, x]) == [first[0], enc.names[id(x)]]  # each node is encoded once
    # Quotes and backslashes in a string field survive the text round trip.
    odd = Node("input", (), Params(index=0, note='a "q" \\ b'), (2,), np.dtype("float32"))
    enc.add([odd])
    view = EGraphView.of(egraph)  # decoding looks the leaf up by its key: it must survive
    leaves = [e.leaf for es in view.classes.values() for e in es if e.leaf is not None]
    assert any(leaf.params == odd.params for leaf in leaves)


_PRECISION = hst.one_of(hst.none(), hst.tuples(*[hst.sampled_from(PRECISIONS)] * 2))


@given(
    pref=hst.sampled_from([None, "float32", "bfloat16", "int32"]),
    precision=_PRECISION.filter(lambda p: p != ("DEFAULT", "DEFAULT")),
)
def test_dot_pref_carries_the_precision(pref, precision):
    dn = (((1,), (0,)), ((), ()))
    text = dot_pref(pref, precision)
    if precision is None:  # a default dot keeps the plain type name that rules match on
        assert text == ("None" if pref is None else pref)
    params = _dot_params(dn_key(dn), text)
    assert params == Params(
        dimension_numbers=dn,
        precision=precision,
        preferred_element_type=None if pref is None else np.dtype(pref),
    )


def _python_roundtrip(program: Program) -> Program:
    # The Python-term encoder (what fusion facts go in by), one let per node.
    egraph = EGraph()
    terms: dict[int, Tensor] = {}
    for i, node in enumerate(program.nodes()):
        term = _encode_node(node, [terms[id(a)] for a in node.args])
        terms[id(node)] = egraph.let(f"p{i}", term)
    egraph.let("root", Tensor.root(tlist(*[terms[id(o)] for o in program.outputs])))
    view = EGraphView.of(egraph)
    return decode(view, extract(view).best, program)


def test_explicit_precision_dots_round_trip_through_both_encoders():
    def f(a, b, v):
        ab = jnp.matmul(a, b, precision="highest")
        mixed = lax.dot(ab, v, precision=(lax.Precision.HIGH, lax.Precision.DEFAULT))
        return mixed, a @ v, lax.dot(a, b, precision="highest")  # no preferred type: "None@..."

    args = (np.ones((3, 3), np.float32), np.ones((3, 3), np.float32), np.ones((3, 2), np.float32))
    program = superopt.trace(f, *args).program
    dots = [n.params for n in program.nodes() if n.op == "dot_general"]
    assert sorted(dot_pref(p["preferred_element_type"], p["precision"]) for p in dots) == [
        "None@HIGH,DEFAULT", "None@HIGHEST,HIGHEST", "float32", "float32@HIGHEST,HIGHEST"
    ]  # fmt: skip
    for back in (_roundtrip(program), _python_roundtrip(program)):
        assert back.canonical_key() == program.canonical_key()
        for r, o in zip(evaluate(program, *args), evaluate(back, *args)):
            np.testing.assert_array_equal(np.asarray(r), np.asarray(o))
