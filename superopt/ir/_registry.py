"""The op registry: one entry per op with its type rule, lowering, rendering and cost.

Adding an op to the IR is one call to `register_op`. Tracing looks primitives up here;
codegen lowers and renders through here; the cost models read FLOPs and bytes from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from ._errors import IRError, ShapeError, UnsupportedPrimitiveError
from ._node import Node, Params

TypeRule = Callable[[Sequence[Node], Params], tuple[tuple[int, ...], np.dtype | None]]
Lowering = Callable[..., Any]
Render = Callable[[Sequence[str], Params], str]


@dataclass(frozen=True, slots=True)
class Cost:
    """Work done by an op: floating-point operations, transcendental calls and bytes.

    A tiled op (a fused loop) also says how it is tiled: `steps`, the loop's trip count
    (the partial last tile included), `tail`, the size of that partial tile as a fraction
    of a full one (`0` when the tile divides the loop's extent; the tail is a separate
    piece of code), and `tile_bytes`, the bytes of the intermediate one step produces and
    consumes (what must stay in fast memory for the tiling to pay). Untiled ops have one
    step, no tail and no tile bytes.
    """

    flops: float = 0.0
    transcendentals: float = 0.0
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    steps: float = 1.0
    tile_bytes: float = 0.0
    tail: float = 0.0

    @property
    def bytes(self) -> float:
        return self.bytes_read + self.bytes_written

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.flops + other.flops,
            self.transcendentals + other.transcendentals,
            self.bytes_read + other.bytes_read,
            self.bytes_written + other.bytes_written,
            max(self.steps, other.steps),
            max(self.tile_bytes, other.tile_bytes),
            max(self.tail, other.tail),
        )


def io_bytes(node: Node) -> tuple[float, float]:
    """Bytes an op reads (its operands) and writes (its result), unfused."""
    return float(sum(a.nbytes for a in node.args)), float(node.nbytes)


@dataclass(frozen=True, slots=True)
class OpDef:
    """How one op is typed, lowered to JAX, rendered as source and costed.

    **Arguments:**

    - `name`: the op's name in the IR (the JAX primitive's name where there is one).
    - `category`: how the e-graph encodes it (see `superopt.ir.egraph`).
    - `type_rule`: operands and params to the output `(shape, dtype)`; `None` falls back
      to `jax.eval_shape` of the lowering.
    - `lower`: `lower(*operand_arrays, **params)` returning a JAX array (or a tuple for
      ops with several results).
    - `render`: operand expressions and params to one Python expression.
    - `cost`: a node to its `Cost`.
    - `primitives`: the JAX primitive names traced into this op.
    - `from_eqn`: a JAX equation's params to this op's params (`None` keeps them).
    - `elementwise`: whether the op maps elements independently.
    - `defaults`: params that `make` fills in when they are not given, so that nodes
      built by code that predates a param get the same params (and key) as traced ones.
    """

    name: str
    category: str
    lower: Lowering
    render: Render
    cost: Callable[[Node], Cost]
    type_rule: TypeRule | None = None
    primitives: tuple[str, ...] = ()
    from_eqn: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    elementwise: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)


_OPS: dict[str, OpDef] = {}
_PRIMITIVES: dict[str, OpDef] = {}


def register_op(opdef: OpDef) -> OpDef:
    """Add an op to the registry (and the primitives it is traced from)."""
    if opdef.name in _OPS:
        raise IRError(f"op {opdef.name!r} is already registered")
    _OPS[opdef.name] = opdef
    for prim in opdef.primitives:
        _PRIMITIVES[prim] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    """The registry entry of op `name`."""
    try:
        return _OPS[name]
    except KeyError:
        raise UnsupportedPrimitiveError(
            f"op {name!r} is not in the superopt IR registry; known ops: {', '.join(sorted(_OPS))}"
        ) from None


def op_for_primitive(primitive_name: str) -> OpDef | None:
    """The registry entry that a JAX primitive traces into, or `None` (opaque)."""
    return _PRIMITIVES.get(primitive_name)


def registered_ops() -> dict[str, OpDef]:
    """A copy of the registry, by op name."""
    return dict(_OPS)


def infer_type(name: str, args: Sequence[Node], params: Params):
    """Output `(shape, dtype)` of op `name` applied to `args`; raises `ShapeError`."""
    opdef = get_op(name)
    if opdef.type_rule is not None:
        return opdef.type_rule(args, params)
    structs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    try:
        out = jax.eval_shape(lambda *xs: opdef.lower(*xs, **params), *structs)
    except Exception as err:
        raise ShapeError(f"{name} cannot take operands {list(args)}: {err}") from err
    return tuple(out.shape), np.dtype(out.dtype)


def make(name: str, *args: Node, **params: Any) -> Node:
    """Build a type-checked node: `make("add", x, y)`, `make("reduce_sum", x, axes=(0,))`.

    Params the op declares `defaults` for may be left out.
    """
    p = Params({**get_op(name).defaults, **params})
    shape, dtype = infer_type(name, args, p)
    return Node(name, tuple(args), p, tuple(int(d) for d in shape), dtype)


def node_cost(node: Node) -> Cost:
    """The `Cost` of one node, from its registry entry."""
    return get_op(node.op).cost(node)
