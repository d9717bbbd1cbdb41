"""The analytical baseline: calibration, roofline terms and the non-negative fit."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superopt
from costmodel.analytical import (
    TERM_NAMES,
    AnalyticalCostModel,
    Calibration,
    calibrate,
    program_terms,
    xla_cost,
)
from costmodel.features import featurize_program

CALIB = Calibration(1e11, 1e9, 2e10, 1e-5, "cpu", "cpu")


def _graph(f, *shapes, xla=True):
    program = superopt.trace(f, *[jnp.ones(s) for s in shapes]).program
    return featurize_program(program, xla_cost(program) if xla else None)


def test_calibration_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPEROPT_CACHE_DIR", str(tmp_path))
    first = calibrate()
    assert first.matmul_flops > 1e8 and first.bandwidth > 1e8 and first.overhead_s > 0
    assert list(tmp_path.glob("calibration-*.json"))
    assert calibrate() == first  # read back from the cache, not re-measured


def test_xla_cost_answers_for_a_matmul():
    program = superopt.trace(lambda a, b: a @ b, jnp.ones((64, 32)), jnp.ones((32, 16))).program
    flops, _, nbytes = xla_cost(program)
    assert np.isclose(flops, 2 * 64 * 32 * 16, rtol=0.01)
    assert nbytes >= 4 * (64 * 32 + 32 * 16 + 64 * 16)


def test_roofline_grows_with_work_and_counts_fusions():
    small = program_terms(_graph(lambda a, b: a @ b, (32, 32), (32, 32)), CALIB)
    big = program_terms(_graph(lambda a, b: a @ b, (512, 512), (512, 512)), CALIB)
    roof = TERM_NAMES.index("roofline")
    assert big[roof] > 100 * small[roof]
    # A chain of elementwise ops is one fused kernel, not five.
    chain = program_terms(
        _graph(lambda x: jnp.tanh(jnp.exp(x) * 2.0 + 1.0) - x, (1024,), xla=False), CALIB
    )
    assert chain[TERM_NAMES.index("kernels")] == 1


def test_xla_bytes_count_only_for_programs_without_loops():
    import dataclasses

    import optax

    def xent(h, w, labels):
        return optax.softmax_cross_entropy_with_integer_labels(h @ w, labels).mean()

    args = (jnp.ones((8, 16)), jnp.ones((16, 512)), jnp.zeros(8, jnp.int32))
    chunked = {}
    for v in superopt.variants(xent, *args, limit=40):
        for node in v.program.nodes():
            if node.op == "chunked_xent":
                chunked[node.params["chunk"]] = featurize_program(v.program)
    assert len(chunked) >= 2
    plain = featurize_program(superopt.trace(xent, *args).program)
    total = TERM_NAMES.index("sum")

    def with_xla_bytes(graph, nbytes):
        return dataclasses.replace(graph, xla_cost=np.asarray([0.0, 0.0, nbytes], np.float32))

    # A gigabyte that XLA says the loop-free program moves is 1e9 / bandwidth seconds.
    assert program_terms(with_xla_bytes(plain, 1e9), CALIB)[total] >= 1e9 / CALIB.bandwidth
    # XLA counts one trip of a loop body: a chunked program keeps the graph's estimate,
    # which differs between chunk sizes, whatever XLA says.
    for graph in chunked.values():
        own = program_terms(graph, CALIB)[total]
        assert program_terms(with_xla_bytes(graph, 1e9), CALIB)[total] == own
    assert len({program_terms(g, CALIB)[total] for g in chunked.values()}) > 1
    # Bases of earlier weights took the larger of the two, and a model read back from JSON
    # written before `loop_bytes` existed keeps doing so.
    graph = next(iter(chunked.values()))
    larger = program_terms(with_xla_bytes(graph, 1e9), CALIB, "larger")[total]
    assert larger >= 1e9 / CALIB.bandwidth
    model = AnalyticalCostModel(CALIB, loop_bytes="larger")
    assert AnalyticalCostModel.from_json(model.to_json()).loop_bytes == "larger"
    assert AnalyticalCostModel.from_json(AnalyticalCostModel(CALIB).to_json()).loop_bytes == (
        "estimate"
    )
    legacy = {"calibration": json.loads(model.to_json())["calibration"], "coef": [1.0] * 6}
    assert AnalyticalCostModel.from_json(json.dumps(legacy)).loop_bytes == "larger"
    assert model.scaled(2.0).loop_bytes == "larger"
    with pytest.raises(ValueError, match="loop_bytes is one of"):
        AnalyticalCostModel(CALIB, loop_bytes="xla")


def test_fit_recovers_nonnegative_coefficients():
    graphs = [_graph(lambda a, b: jnp.tanh(a @ b), (n, 64), (64, n)) for n in (8, 32, 128, 256)]
    model = AnalyticalCostModel(CALIB)
    terms = model.terms(graphs)
    true = np.asarray([2e-5, 3.0, 0.0, 1e-6, 0.0, 0.0])
    fitted = model.fit(graphs, terms @ true)
    assert (np.asarray(fitted.coef) >= 0).all()
    pred = fitted.score_programs(graphs)
    assert np.allclose(pred, terms @ true, rtol=0.05)
    assert AnalyticalCostModel.from_json(fitted.to_json()).coef == fitted.coef


def test_node_scores_are_positive_for_kernels():
    g = _graph(lambda a, b: jax.nn.relu(a @ b), (64, 64), (64, 64))
    model = AnalyticalCostModel(CALIB)
    scores = model.score_nodes(g.node_opcode, g.node_feat)
    assert scores.shape == (g.num_nodes,) and (scores >= 0).all() and scores.max() > 0
    program = superopt.trace(lambda a, b: jax.nn.relu(a @ b), jnp.ones((64, 64)),
                             jnp.ones((64, 64))).program  # fmt: skip
    by_signature = model.score_signatures(program.nodes())
    assert by_signature.shape == (g.num_nodes,) and by_signature.max() > 0
