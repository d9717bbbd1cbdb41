"""Features of IR programs for the cost models, in the TpuGraphs style.

A program becomes a graph: `node_opcode` (an int id per node from a fixed vocabulary),
`node_feat` (a float32 row per node: log shapes, rank, dtype, FLOPs, bytes, tile sizes,
...), `edge_index` (operand -> user pairs) and `config_feat` (whole-program numbers such
as the tile sizes used). The vocabulary is a fixed list, not read from the registry at
import time, so that shipped weights keep their meaning when ops are added; an op outside
it gets the `UNKNOWN` id.

For extraction from the e-graph, `featurize_signatures` turns many e-node signatures (op,
params, operand types, output type) into rows at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from superopt.ir import Cost, Node, Params, Program, get_op, node_cost

# The opcode vocabulary. Append only: an id is an index into this list, and shipped
# weights depend on it. Id 0 stands for any op outside the list (and for `opaque`).
OPCODES: tuple[str, ...] = (
    "<unknown>",
    "input", "const", "literal", "iota",
    "neg", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sqrt", "rsqrt",
    "cbrt", "abs", "sign", "floor", "ceil", "sin", "cos", "tan", "erf", "erf_inv",
    "square", "is_finite", "not", "stop_gradient",
    "add", "sub", "mul", "div", "max", "min", "pow", "rem", "atan2", "and", "or", "xor",
    "eq", "ne", "lt", "le", "gt", "ge",
    "integer_pow", "select_n", "clamp", "convert_element_type",
    "dot_general",
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
    "argmax", "argmin",
    "broadcast_in_dim", "reshape", "transpose", "squeeze", "expand_dims", "concatenate",
    "slice", "dynamic_slice", "gather",
    "opaque", "tuple_get",
    # Fused ops with tile parameters.
    "chunked_xent", "flash_attention",
    # Reserved for ops added later, so the embedding table keeps its shape.
    "<reserved0>", "<reserved1>", "<reserved2>", "<reserved3>",
)  # fmt: skip
UNKNOWN = 0
OPCODE_ID: dict[str, int] = {name: i for i, name in enumerate(OPCODES)}
NUM_OPCODES = len(OPCODES)

# Params that are tile sizes (fused ops) or chunk counts.
TILE_PARAMS = ("chunk", "block", "block_q", "block_k", "block_size", "tile", "num_chunks")
MAX_RANK = 6
_DTYPES = ("float32", "float16", "bfloat16", "float64", "int32", "int64", "bool")

# Column layout of `node_feat`.
FEATURE_NAMES: tuple[str, ...] = (
    *(f"log_dim{i}" for i in range(MAX_RANK)),
    "rank",
    "log_size",
    *(f"dtype_{d}" for d in _DTYPES),
    "dtype_other",
    "log_flops",
    "log_transcendentals",
    "log_bytes_read",
    "log_bytes_written",
    "log_intensity",
    "num_operands",
    "elementwise",
    "log_max_operand_size",
    "log_contracted",
    "log_reduced",
    "log_tile0",
    "log_tile1",
    "log_num_tiles",
    "is_output",
    "num_users",
    "log_tile_bytes",
    "log_step_flops",
    "log_step_bytes",
    "tail_fraction",
)
NUM_FEATURES = len(FEATURE_NAMES)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
_COL = FEATURE_INDEX

CONFIG_NAMES: tuple[str, ...] = (
    "log_tile0",
    "log_tile1",
    "log_num_nodes",
    "log_total_flops",
    "log_total_bytes",
    "log_total_transcendentals",
    "num_dots",
    "num_opaque",
    "log_max_steps",
    "log_max_tile_bytes",
)
NUM_CONFIG = len(CONFIG_NAMES)
NO_XLA_COST = np.full(3, np.nan, np.float32)
NO_XLA_COST.setflags(write=False)


@dataclass(frozen=True, eq=False)
class GraphArrays:
    """One program as arrays.

    **Arguments:**

    - `node_opcode`: `int32[nodes]`, ids into `OPCODES`.
    - `node_feat`: `float32[nodes, NUM_FEATURES]`.
    - `edge_index`: `int32[edges, 2]`, rows `(operand, user)`.
    - `config_feat`: `float32[NUM_CONFIG]`, whole-program features.
    - `xla_cost`: `float32[3]`, XLA's own `(flops, transcendentals, bytes accessed)` of the
      compiled program where it answered (after its fusion), else NaNs.
    """

    node_opcode: Int[np.ndarray, " nodes"]
    node_feat: Float[np.ndarray, "nodes feat"]
    edge_index: Int[np.ndarray, "edges 2"]
    config_feat: Float[np.ndarray, " config"]
    xla_cost: Float[np.ndarray, " 3"] = field(default_factory=lambda: NO_XLA_COST)

    @property
    def num_nodes(self) -> int:
        return int(self.node_opcode.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[0])


@dataclass(frozen=True)
class NodeSignature:
    """What an e-node's cost depends on: its op, params and the types around it.

    **Arguments:**

    - `op`: the registry op name.
    - `params`: the op's `Params`.
    - `arg_types`: `(shape, dtype)` of each operand.
    - `shape`, `dtype`: the output type.
    """

    op: str
    params: Params
    arg_types: tuple[tuple[tuple[int, ...], np.dtype | None], ...]
    shape: tuple[int, ...]
    dtype: np.dtype | None

    @staticmethod
    def of(node: Node) -> NodeSignature:
        """The signature of an IR node."""
        return NodeSignature(
            node.op,
            node.params,
            tuple((a.shape, a.dtype) for a in node.args),
            node.shape,
            node.dtype,
        )

    def key(self) -> tuple[Any, ...]:
        """A hashable key: equal keys have equal features (tuples hash faster than text)."""
        return (self.op, self.params.key, self.arg_types, self.shape, self.dtype)

    def as_node(self) -> Node:
        """A node with placeholder operands of the right types (costs read only types)."""
        args = tuple(
            _TypedNode("input", (), Params(index=i), tuple(s), d)
            for i, (s, d) in enumerate(self.arg_types)
        )
        return _TypedNode(self.op, args, self.params, tuple(self.shape), self.dtype)


class _TypedNode(Node):
    """A `Node` whose sizes are computed without numpy (featurizing is size-heavy)."""

    __slots__ = ()

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return 0 if self.dtype is None else math.prod(self.shape) * self.dtype.itemsize


def opcode_of(op: str) -> int:
    """The vocabulary id of op name `op` (`UNKNOWN` outside the vocabulary)."""
    return OPCODE_ID.get(op, UNKNOWN) if op != "opaque" else UNKNOWN


def _log(x: float) -> float:
    return math.log1p(max(float(x), 0.0))


def _tiles(params: Params) -> list[int]:
    return [int(params[k]) for k in TILE_PARAMS if k in params and _is_int(params[k])]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


_DTYPE_COL: dict[Any, int] = {}


def _dtype_col(dtype: np.dtype | None) -> int:
    col = _DTYPE_COL.get(dtype)
    if col is None:
        name = None if dtype is None else dtype.name
        col = _COL[f"dtype_{name}"] if name in _DTYPES else _COL["dtype_other"]
        _DTYPE_COL[dtype] = col
    return col


def _size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _raw_row(node: Node) -> list[float]:
    """The node's features (cached per signature)."""
    row = [0.0] * NUM_FEATURES
    shape = node.shape
    for i, d in enumerate(shape[-MAX_RANK:]):
        row[i] = _log(d)
    row[_COL["rank"]] = float(len(shape))
    size = _size(shape)
    row[_COL["log_size"]] = _log(size)
    row[_dtype_col(node.dtype)] = 1.0
    try:
        cost = node_cost(node)
    except Exception:
        # An op outside the registry (or a cost rule that cannot read a placeholder)
        # is costed as pure data movement.
        cost = Cost(0.0, 0.0, float(sum(a.nbytes for a in node.args)), float(node.nbytes))
    flops, trans, br, bw = cost.flops, cost.transcendentals, cost.bytes_read, cost.bytes_written
    row[_COL["log_flops"]] = _log(flops)
    row[_COL["log_transcendentals"]] = _log(trans)
    row[_COL["log_bytes_read"]] = _log(br)
    row[_COL["log_bytes_written"]] = _log(bw)
    row[_COL["log_intensity"]] = _log(flops / max(br + bw, 1.0))
    row[_COL["num_operands"]] = float(len(node.args))
    try:
        row[_COL["elementwise"]] = float(get_op(node.op).elementwise)
    except Exception:
        pass
    max_operand = max((_size(a.shape) for a in node.args), default=0)
    row[_COL["log_max_operand_size"]] = _log(max_operand)
    if node.op == "dot_general" and node.args:
        (lc, _), _ = node.params["dimension_numbers"]
        row[_COL["log_contracted"]] = _log(math.prod(node.args[0].shape[i] for i in lc))
    if node.op.startswith(("reduce_", "arg")) and node.args:
        row[_COL["log_reduced"]] = _log(_size(node.args[0].shape) / max(size, 1))
    tiles = _tiles(node.params) if node.params else []
    if tiles:
        row[_COL["log_tile0"]] = _log(tiles[0])
    if len(tiles) > 1:
        row[_COL["log_tile1"]] = _log(tiles[1])
    # How a tiled loop runs: its trip count, the bytes one step keeps in flight, the work
    # and traffic of one step, and its partial last tile. A loop's time is about steps x
    # the time of a step, and a step of a long-query attention looks like a step of a
    # short-query one with a larger tile: per-step numbers carry over between shape regimes.
    row[_COL["log_num_tiles"]] = _log(cost.steps - 1.0)
    row[_COL["log_tile_bytes"]] = _log(cost.tile_bytes)
    steps = max(cost.steps, 1.0)
    row[_COL["log_step_flops"]] = _log(flops / steps)
    row[_COL["log_step_bytes"]] = _log((br + bw) / steps)
    row[_COL["tail_fraction"]] = cost.tail
    return row


_ROW_CACHE: dict[tuple[Any, ...], tuple[int, list[float]]] = {}
_ROW_CACHE_LIMIT = 200_000


def _signature_row(sig: NodeSignature | Node) -> tuple[int, list[float]]:
    if isinstance(sig, Node):
        sig = NodeSignature.of(sig)
    key = sig.key()
    hit = _ROW_CACHE.get(key)
    if hit is None:
        hit = (opcode_of(sig.op), _raw_row(sig.as_node()))
        if len(_ROW_CACHE) < _ROW_CACHE_LIMIT:
            _ROW_CACHE[key] = hit
    return hit


def featurize_signatures(
    signatures: Sequence[NodeSignature | Node],
) -> tuple[Int[np.ndarray, " n"], Float[np.ndarray, "n feat"]]:
    """Opcode ids and feature rows of many e-nodes at once.

    **Arguments:**

    - `signatures`: `NodeSignature`s (or IR nodes, whose signature is taken).

    **Returns:** `(node_opcode int32[n], node_feat float32[n, NUM_FEATURES])`. The graph
    columns (`is_output`, `num_users`) are zero: an e-node is scored on its own.
    """
    n = len(signatures)
    opcodes = np.zeros(n, np.int32)
    feats = np.zeros((n, NUM_FEATURES), np.float32)
    if n == 0:
        return opcodes, feats
    rows = [_signature_row(s) for s in signatures]
    opcodes[:] = [r[0] for r in rows]
    feats[:] = [r[1] for r in rows]
    return opcodes, feats


def featurize_program(program: Program, xla_cost: np.ndarray | None = None) -> GraphArrays:
    """A program as `GraphArrays` (nodes in topological order, edges operand -> user).

    **Arguments:**

    - `program`: the IR program.
    - `xla_cost`: XLA's `(flops, transcendentals, bytes accessed)` if known (see
      `costmodel.analytical.xla_cost`).

    **Returns:** its `GraphArrays`.
    """
    nodes = program.nodes()
    index = {id(n): i for i, n in enumerate(nodes)}
    opcodes, feats = featurize_signatures(nodes)
    edges = [(index[id(a)], i) for i, n in enumerate(nodes) for a in n.args]
    edge_index = np.asarray(edges, np.int32).reshape(-1, 2)
    users = np.bincount(edge_index[:, 0], minlength=len(nodes)) if len(edges) else 0
    feats[:, _COL["num_users"]] = np.log1p(users)
    for o in program.outputs:
        feats[index[id(o)], _COL["is_output"]] = 1.0
    xla = NO_XLA_COST if xla_cost is None else np.asarray(xla_cost, np.float32).reshape(3)
    return GraphArrays(opcodes, feats, edge_index, config_features(program, nodes), xla)


def config_features(program: Program, nodes: list[Node] | None = None) -> np.ndarray:
    """Whole-program features: the tile sizes used, node count, total work, and the
    longest tiled loop and largest tile working set."""
    nodes = program.nodes() if nodes is None else nodes
    tiles: list[int] = []
    total = Cost()
    dots = opaque = 0
    for n in nodes:
        tiles.extend(_tiles(n.params))
        try:
            total = total + node_cost(n)
        except Exception:
            pass
        dots += n.op == "dot_general"
        opaque += n.op == "opaque"
    tiles += [0, 0]
    return np.asarray(
        [
            _log(tiles[0]),
            _log(tiles[1]),
            _log(len(nodes)),
            _log(total.flops),
            _log(total.bytes),
            _log(total.transcendentals),
            float(dots),
            float(opaque),
            _log(total.steps - 1.0),
            _log(total.tile_bytes),
        ],
        np.float32,
    )
