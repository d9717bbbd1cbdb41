"""Features of IR programs and e-node signatures."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import superopt
from costmodel.features import (
    FEATURE_NAMES,
    NUM_CONFIG,
    NUM_FEATURES,
    OPCODE_ID,
    OPCODES,
    UNKNOWN,
    NodeSignature,
    featurize_program,
    featurize_signatures,
)
from superopt.ir import Node, Params, make, registered_ops


def _program(n=8, k=16, m=32):
    def f(x, w):
        return jax.nn.softmax(jnp.tanh(x @ w), axis=-1).sum()

    return superopt.trace(f, jnp.ones((n, k)), jnp.ones((k, m))).program


def _input(i, shape, dtype=np.float32):
    return Node("input", (), Params(index=i), shape, np.dtype(dtype))


def test_every_registered_op_has_an_opcode():
    missing = [name for name in registered_ops() if name not in OPCODE_ID]
    assert missing == []
    assert OPCODES[UNKNOWN] == "<unknown>"


def test_program_arrays_have_the_documented_layout():
    program = _program()
    g = featurize_program(program)
    nodes = program.nodes()
    assert g.node_opcode.shape == (len(nodes),) and g.node_opcode.dtype == np.int32
    assert g.node_feat.shape == (len(nodes), NUM_FEATURES) == (len(nodes), len(FEATURE_NAMES))
    assert g.node_feat.dtype == np.float32 and np.isfinite(g.node_feat).all()
    assert g.config_feat.shape == (NUM_CONFIG,)
    assert g.edge_index.shape == (sum(len(n.args) for n in nodes), 2)
    # Edges run operand -> user, and nodes are topologically ordered.
    assert (g.edge_index[:, 0] < g.edge_index[:, 1]).all()
    dot = next(i for i, n in enumerate(nodes) if n.op == "dot_general")
    assert g.node_opcode[dot] == OPCODE_ID["dot_general"]
    flops_col = FEATURE_NAMES.index("log_flops")
    assert np.isclose(g.node_feat[dot, flops_col], np.log1p(2 * 8 * 16 * 32))
    assert g.node_feat[-1, FEATURE_NAMES.index("is_output")] == 1.0


def test_bigger_shapes_give_bigger_features():
    small = featurize_program(_program(8, 16, 32))
    big = featurize_program(_program(64, 128, 256))
    col = FEATURE_NAMES.index("log_flops")
    assert big.node_feat[:, col].sum() > small.node_feat[:, col].sum()


def test_tile_parameters_are_features():
    h, w = _input(0, (64, 32)), _input(1, (32, 4096))
    labels = _input(2, (64,), np.int32)
    rows = featurize_signatures([make("chunked_xent", h, w, labels, chunk=c) for c in (256, 1024)])[
        1
    ]
    col = FEATURE_NAMES.index("log_tile0")
    assert np.allclose(rows[:, col], np.log1p([256, 1024]))
    # The loop's trip count (4096 / 256 = 16 steps, then 4), the bytes a step keeps in
    # flight (64 rows x chunk float32 logits) and the work of one step.
    assert np.allclose(rows[:, FEATURE_NAMES.index("log_num_tiles")], np.log1p([15, 3]))
    assert np.allclose(rows[:, FEATURE_NAMES.index("log_tile_bytes")], np.log1p([65536, 262144]))
    step_flops = rows[:, FEATURE_NAMES.index("log_step_flops")]
    assert step_flops[1] > step_flops[0]


def test_untiled_ops_have_one_step_and_no_tile():
    rows = featurize_program(_program()).node_feat
    for name in ("log_num_tiles", "log_tile_bytes", "log_tile0"):
        assert (rows[:, FEATURE_NAMES.index(name)] == 0).all()


def test_signature_rows_match_node_rows():
    program = _program()
    nodes = program.nodes()
    a = featurize_signatures(nodes)
    b = featurize_signatures([NodeSignature.of(n) for n in nodes])
    assert (a[0] == b[0]).all() and np.array_equal(a[1], b[1])


def test_opaque_nodes_get_the_unknown_id():
    def f(x):
        return jax.lax.cumsum(x, 0) * 2.0

    g = featurize_program(superopt.trace(f, jnp.ones(8)).program)
    assert UNKNOWN in g.node_opcode.tolist()


def test_featurizing_ten_thousand_enodes_is_fast():
    sigs = []
    for i in range(10_000):
        a, b = _input(0, (i % 500 + 1, 64)), _input(1, (64, i % 97 + 1))
        node = make("dot_general", a, b, dimension_numbers=(((1,), (0,)), ((), ())),
                    preferred_element_type=None) if i % 2 else make("exp", a)  # fmt: skip
        sigs.append(NodeSignature.of(node))
    start = time.perf_counter()
    _opcodes, feats = featurize_signatures(sigs)
    elapsed = time.perf_counter() - start
    assert feats.shape == (10_000, NUM_FEATURES)
    assert elapsed < 1.0, elapsed
