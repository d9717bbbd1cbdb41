"""The e-graph language: egglog sorts for the IR, `encode` and `decode`.

Every IR op has a constructor on the egglog sort `Tensor`. The core categories have
typed constructors that rules match on (`Tensor.dot`, `Tensor.binary`, `Tensor.reduce`,
`Tensor.transpose`, ...); every other op, including any op registered later, goes through
the generic constructor

```python
Tensor.op(name: String, params: String, args: TList)
```

where `name` is the registry name, `params` is `params_key(Params(...))` (the canonical
`Params.key`, remembered in a side table so that decoding gets the `Params` back) and
`args` is a cons list `TList.nil().push(x).push(y)` (or `tlist(x, y)`). A multi-output
program has one root, `Tensor.root(TList)` (tensat's `noop`).

## Adding rules for a new op (e.g. a fused op) without editing this file

```python
from egglog import String, ruleset, rule, eq, set_, union
from superopt.ir import Params
from superopt.ir._egraph import Tensor, TList, rank, params_key, tlist, MATMUL

CHUNK = params_key(Params(chunk=2048))  # registers the Params for decoding

@ruleset
def chunked_xent(h: Tensor, w: Tensor, lab: Tensor, p: String, x: Tensor):
    # side condition: h and w are 2-D (rank facts come from the encoding and analysis)
    yield rule(
        eq(x).to(SOME_PATTERN(Tensor.dot(h, w, MATMUL, p), lab)), rank(h) == 2, rank(w) == 2
    ).then(
        union(x).with_(Tensor.op("chunked_xent", CHUNK, tlist(h, w, lab))),
        set_(rank(Tensor.op("chunked_xent", CHUNK, tlist(h, w, lab)))).to(1),
    )
```

Decoding needs nothing else: the op name is looked up in the registry and the params in
the side table, and shapes of every e-class are recomputed Python-side with the registry's
type rules (`EGraphView.types`). If later rules test `rank(...)` of what you create, set
it in the rule's actions as above (the analysis rules in `RANK_ANALYSIS` cover the typed
constructors only).

## What rules can rely on

- `rank(t) -> i64` is known for every encoded e-class and, through `RANK_ANALYSIS`, for
  every e-class that a rule creates with a typed constructor.
- `Tensor.dot(x, y, dn, pref)`: `dn` is `dn_key(dimension_numbers)` (`MATMUL` is
  `(((1,),(0,)),((),()))`, `VECMAT` is `(((0,),(0,)),((),()))`, `BMM` is
  `(((2,),(1,)),((0,),(0,)))`), `pref` the preferred element type's name or `"None"`,
  then `@` and the pair for an explicit precision (`"None@HIGHEST,HIGHEST"`, `dot_pref`).
  Passing `pref` through keeps the precision; a rule that writes its own builds a default
  dot, so it must not match an explicit-precision one (matching a dtype name never does).
- `Tensor.binary(op, x, y)` / `Tensor.unary(op, x)` with the registry op name.
- `Tensor.reduce(op, x, axes: Vec[i64])`, `Tensor.transpose(x, perm: Vec[i64])`.
- `Tensor.literal(key)` is a rank-0 literal; `literal_key(value, dtype)` gives its key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from egglog import (
    EGraph,
    Expr,
    String,
    StringLike,
    Vec,
    eq,
    function,
    i64,
    i64Like,
    rule,
    ruleset,
    set_,
)

from ._errors import IRError, ShapeError
from ._node import Node, Params, Program
from ._registry import get_op, infer_type


class TList(Expr):
    """A cons list of tensors: the operands of variadic ops and the root's outputs."""

    @classmethod
    def nil(cls) -> TList: ...

    def push(self, x: Tensor) -> TList: ...


class Tensor(Expr):
    """An IR value. One constructor per op category; `op` covers every other op."""

    # leaves: input/const/iota by key (the node is kept in a side table)
    @classmethod
    def leaf(cls, key: StringLike) -> Tensor: ...

    # a rank-0 literal (`literal_key(value, dtype)`)
    @classmethod
    def literal(cls, key: StringLike) -> Tensor: ...

    # elementwise unary op `op` (registry name) of x
    @classmethod
    def unary(cls, op: StringLike, x: Tensor) -> Tensor: ...

    # elementwise binary op; lax lets a rank-0 operand stand for any shape
    @classmethod
    def binary(cls, op: StringLike, x: Tensor, y: Tensor) -> Tensor: ...

    # dot_general(x, y) with dimension numbers `dn_key(...)` and `dot_pref(type, precision)`
    @classmethod
    def dot(cls, x: Tensor, y: Tensor, dn: StringLike, pref: StringLike) -> Tensor: ...

    # reduction `op` (reduce_sum, reduce_max, ...) over `axes`
    @classmethod
    def reduce(cls, op: StringLike, x: Tensor, axes: Vec[i64]) -> Tensor: ...

    # transpose by permutation `perm`
    @classmethod
    def transpose(cls, x: Tensor, perm: Vec[i64]) -> Tensor: ...

    # broadcast_in_dim, params key of (shape, broadcast_dimensions)
    @classmethod
    def broadcast(cls, x: Tensor, params: StringLike) -> Tensor: ...

    # reshape, params key of (new_sizes)
    @classmethod
    def reshape(cls, x: Tensor, params: StringLike) -> Tensor: ...

    # static slice, params key of (start_indices, limit_indices, strides)
    @classmethod
    def slice(cls, x: Tensor, params: StringLike) -> Tensor: ...

    # convert_element_type to the dtype named `dtype`
    @classmethod
    def convert(cls, x: Tensor, dtype: StringLike) -> Tensor: ...

    # select_n(pred, on_false, on_true)
    @classmethod
    def select(cls, pred: Tensor, on_false: Tensor, on_true: Tensor) -> Tensor: ...

    # concatenate along `dimension`
    @classmethod
    def concatenate(cls, xs: TList, dimension: i64Like) -> Tensor: ...

    # an equation the IR does not model; its results are read with tuple_get
    @classmethod
    def opaque(cls, params: StringLike, xs: TList) -> Tensor: ...

    # result `index` of an opaque node
    @classmethod
    def tuple_get(cls, x: Tensor, index: i64Like) -> Tensor: ...

    # any other registry op: name, params key, operands
    @classmethod
    def op(cls, name: StringLike, params: StringLike, args: TList) -> Tensor: ...

    # the single root of a program: its outputs in order
    @classmethod
    def root(cls, outputs: TList) -> Tensor: ...


@function
def rank(t: Tensor) -> i64:  # type: ignore[empty-body]
    """The rank of a tensor e-class."""


# ---------------------------------------------------------------- side tables

_PARAMS: dict[str, Params] = {}
_LEAVES: dict[str, Node] = {}
_DNS: dict[str, Any] = {}


def params_key(params: Params) -> str:
    """The key of `params` in the e-graph; remembers `params` for decoding."""
    key = params.key
    _PARAMS.setdefault(key, params)
    return key


def dn_key(dimension_numbers: Any) -> str:
    """The `dn` string of `Tensor.dot` for dot_general dimension numbers."""
    (lc, rc), (lb, rb) = dimension_numbers
    dn = ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))
    key = Params(dn=dn).key[3:]
    _DNS.setdefault(key, dn)
    return key


def literal_key(value: Any, dtype: Any) -> str:
    """The key of a rank-0 literal (a constant in rules, e.g. one or zero)."""
    dtype = np.dtype(dtype)
    value = np.asarray(value, dtype).item()
    node = Node("literal", (), Params(value=value, dtype=dtype), (), dtype)
    return _leaf_key(node)


def _leaf_key(node: Node) -> str:
    key = f"{node.op}[{node.params.key}]:{node.dtype}{list(node.shape)}"
    _LEAVES.setdefault(key, node)
    return key


MATMUL = dn_key((((1,), (0,)), ((), ())))  # x @ y for 2-D x (y 2-D or 1-D)
VECMAT = dn_key((((0,), (0,)), ((), ())))  # x @ y for 1-D x (y 2-D or 1-D)
BMM = dn_key((((2,), (1,)), ((0,), (0,))))  # batched matmul of 3-D operands


def tlist(*xs: Tensor) -> TList:
    """A `TList` of `xs` in order."""
    out = TList.nil()
    for x in xs:
        out = out.push(x)
    return out


def _vec(values: Iterable[int]) -> Vec[i64]:
    return Vec[i64](*[i64(int(v)) for v in values])


# ---------------------------------------------------------------- rank analysis


@ruleset
def RANK_ANALYSIS(
    x: Tensor, a: Tensor, b: Tensor, c: Tensor, op: String, p: String, v: Vec[i64], r: i64, s: i64
):
    # elementwise ops keep the rank (a rank-0 operand broadcasts)
    yield rule(eq(x).to(Tensor.unary(op, a)), eq(r).to(rank(a))).then(set_(rank(x)).to(r))
    yield rule(eq(x).to(Tensor.binary(op, a, b)), eq(r).to(rank(a)), eq(s).to(rank(b))).then(
        set_(rank(x)).to(r.max(s))
    )
    yield rule(eq(x).to(Tensor.convert(a, p)), eq(r).to(rank(a))).then(set_(rank(x)).to(r))
    yield rule(eq(x).to(Tensor.transpose(a, v)), eq(r).to(rank(a))).then(set_(rank(x)).to(r))
    yield rule(eq(x).to(Tensor.select(a, b, c)), eq(r).to(rank(b))).then(set_(rank(x)).to(r))
    yield rule(eq(x).to(Tensor.reduce(op, a, v)), eq(r).to(rank(a))).then(
        set_(rank(x)).to(r - v.length())
    )
    # the dots the rules build: rank = free dims of both operands (+ batch)
    yield rule(eq(x).to(Tensor.dot(a, b, MATMUL, p)), eq(r).to(rank(a)), eq(s).to(rank(b))).then(
        set_(rank(x)).to(r + s - 2)
    )
    yield rule(eq(x).to(Tensor.dot(a, b, VECMAT, p)), eq(r).to(rank(a)), eq(s).to(rank(b))).then(
        set_(rank(x)).to(r + s - 2)
    )
    yield rule(eq(x).to(Tensor.dot(a, b, BMM, p))).then(set_(rank(x)).to(3))


# ---------------------------------------------------------------- encode


def _dtype_name(dtype: Any) -> str:
    return "None" if dtype is None else np.dtype(dtype).name


def dot_pref(preferred_element_type: Any, precision: tuple[str, str] | None = None) -> str:
    """`Tensor.dot`'s `pref`: the preferred type's name, alone for a default precision."""
    name = _dtype_name(preferred_element_type)
    return name if precision is None else f"{name}@{','.join(precision)}"


def _dot_params(dn: str, pref: str) -> Params:
    name, _, precision = pref.partition("@")
    return Params(
        dimension_numbers=_DNS[dn],
        preferred_element_type=None if name == "None" else np.dtype(name),
        precision=tuple(precision.split(",")) if precision else None,
    )


# One row per typed constructor: how a node's fields become the constructor's arguments.
# Field kinds: "s" a string, "t" an operand, "v" a vector of ints, "i" an int, "l" a list
# of operands. Both encoders (Python terms, and egglog text for speed) read this table.
def _spec(node: Node) -> tuple[str, list[tuple[str, Any]]]:
    """The constructor name and its fields for `node` (operands as their positions)."""
    op, p = node.op, node.params
    category = get_op(op).category
    n = len(node.args)
    if op == "literal":
        return "literal", [("s", _leaf_key(node))]
    if category == "leaf":
        return "leaf", [("s", _leaf_key(node))]
    if category == "unary":
        return "unary", [("s", op), ("t", 0)]
    if category == "binary":
        return "binary", [("s", op), ("t", 0), ("t", 1)]
    if op == "dot_general":
        pref = dot_pref(p["preferred_element_type"], p.get("precision"))
        return "dot", [("t", 0), ("t", 1), ("s", dn_key(p["dimension_numbers"])), ("s", pref)]
    if category == "reduce":
        return "reduce", [("s", op), ("t", 0), ("v", p["axes"])]
    if op == "transpose":
        return "transpose", [("t", 0), ("v", p["permutation"])]
    if op in ("broadcast_in_dim", "reshape", "slice"):
        name = "broadcast" if op == "broadcast_in_dim" else op
        return name, [("t", 0), ("s", params_key(p))]
    if op == "convert_element_type":
        return "convert", [("t", 0), ("s", _dtype_name(p["new_dtype"]))]
    if op == "select_n" and n == 3:
        return "select", [("t", 0), ("t", 1), ("t", 2)]
    if op == "concatenate":
        return "concatenate", [("l", range(n)), ("i", p["dimension"])]
    if op == "opaque":
        return "opaque", [("s", params_key(p)), ("l", range(n))]
    if op == "tuple_get":
        return "tuple_get", [("t", 0), ("i", p["index"])]
    return "op", [("s", op), ("s", params_key(p)), ("l", range(n))]


def _encode_node(node: Node, args: list[Tensor]) -> Tensor:
    """The e-graph term of one node over the terms of its operands."""
    name, fields = _spec(node)
    values: list[Any] = []
    for kind, value in fields:
        if kind == "t":
            values.append(args[value])
        elif kind == "l":
            values.append(tlist(*[args[i] for i in value]))
        elif kind == "v":
            values.append(_vec(value))
        else:
            values.append(value)
    return getattr(Tensor, name)(*values)


def let_name(i: int) -> str:
    """The e-graph name of the `i`-th node of `program.nodes()`."""
    return f"n{i}"


def _prelude() -> list[Any]:
    # Every constructor, `rank` and the i64 vector sort in one query: checking it makes
    # egglog-python declare them all without adding a single e-node.
    leaf = Tensor.leaf("")
    terms = [Tensor.literal(""), Tensor.unary("", leaf), Tensor.binary("", leaf, leaf)]
    terms += [Tensor.dot(leaf, leaf, "", ""), Tensor.reduce("", leaf, Vec[i64]())]
    terms += [Tensor.transpose(leaf, _vec([0])), Tensor.broadcast(leaf, "")]
    terms += [Tensor.reshape(leaf, ""), Tensor.slice(leaf, ""), Tensor.convert(leaf, "")]
    terms += [Tensor.select(leaf, leaf, leaf), Tensor.concatenate(tlist(leaf), 0)]
    terms += [Tensor.opaque("", tlist(leaf)), Tensor.tuple_get(leaf, 0)]
    terms += [Tensor.op("", "", tlist(leaf))]
    return [eq(Tensor.root(tlist(*terms))).to(leaf), rank(leaf) == i64(-1)]


class TextEncoder:
    """Adds IR nodes to an e-graph as egglog text, one `let` per node.

    egglog-python spends milliseconds converting each term; parsing the same commands as
    text in Rust takes microseconds, which matters for programs of thousands of nodes.
    Nodes are remembered by identity, so a node is encoded once however often it is added.

    **Arguments:**

    - `egraph`: the e-graph (its constructors are declared on creation).
    - `prefix`: the prefix of the let names this encoder makes.
    """

    def __init__(self, egraph: EGraph, prefix: str = "n"):
        self.egraph = egraph
        self.prefix = prefix
        self.names: dict[int, str] = {}
        self._keep: list[Node] = []  # identity keys stay valid while the nodes live
        egraph.check_fail(*_prelude())
        callable_to_egg = egraph._callable_to_egg
        self._egg = {
            name: callable_to_egg(getattr(Tensor, name))[1]
            for name in ("literal", "leaf", "unary", "binary", "dot", "reduce", "transpose",
                         "broadcast", "reshape", "slice", "convert", "select", "concatenate",
                         "opaque", "tuple_get", "op", "root")
        }  # fmt: skip
        self._nil = f"({callable_to_egg(TList.nil)[1]})"
        self._push = callable_to_egg(TList.push)[1]
        self._rank = callable_to_egg(rank)[1]

    def _list(self, names: Iterable[str]) -> str:
        out = self._nil
        for n in names:
            out = f"({self._push} {out} {n})"
        return out

    def _text(self, node: Node, args: list[str]) -> str:
        name, fields = _spec(node)
        parts = [self._egg[name]]
        for kind, value in fields:
            if kind == "s":
                parts.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
            elif kind == "t":
                parts.append(args[value])
            elif kind == "l":
                parts.append(self._list(args[i] for i in value))
            elif kind == "v":
                parts.append(f"(vec-of {' '.join(str(int(v)) for v in value)})" if value
                             else "(vec-empty)")  # fmt: skip
            else:
                parts.append(str(int(value)))
        return f"({' '.join(parts)})"

    def add(self, nodes: Iterable[Node]) -> list[str]:
        """Encode `nodes` (and their operands); returns the let name (`$...`) of each."""
        nodes = list(nodes)
        lines: list[str] = []
        for node in _toposort(nodes, self.names):
            lines += self._let(node, f"${self.prefix}{len(self.names)}")
        self.run(lines)
        return [self.names[id(n)] for n in nodes]

    def _let(self, node: Node, name: str) -> list[str]:
        args = [self.names[id(a)] for a in node.args]
        self.names[id(node)] = name
        self._keep.append(node)
        lines = [f"(let {name} {self._text(node, args)})"]
        if node.dtype is not None:
            lines.append(f"(set ({self._rank} {name}) {node.ndim})")
        return lines

    def root(self, outputs: Iterable[Node], name: str = "root") -> str:
        """Bind `Tensor.root` of `outputs` to the let `name`; returns `$name`."""
        args = self.add(outputs)
        self.run([f"(let ${name} ({self._egg['root']} {self._list(args)}))"])
        return f"${name}"

    def run(self, lines: list[str]) -> None:
        """Parse and run egglog commands (a no-op for none)."""
        if lines:
            egg = self.egraph._egraph
            egg.run_program(*egg.parse_program("\n".join(lines)))


def _toposort(nodes: list[Node], known: Mapping[int, Any]) -> list[Node]:
    # Operands before users, leaving out (and not descending into) the `known` ids.
    # Iterative: programs can be thousands of nodes deep.
    order: list[Node] = []
    seen: set[int] = set(known)
    stack: list[tuple[Node, bool]] = [(n, False) for n in reversed(nodes)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((a, False) for a in reversed(node.args) if id(a) not in seen)
    return order


def encode(program: Program) -> tuple[EGraph, TextEncoder]:
    """Put `program` into a fresh e-graph, one named e-class per node.

    **Arguments:**

    - `program`: the IR program.

    **Returns:** `(egraph, encoder)`. Node `i` of `program.nodes()` is bound to the let
    `let_name(i)`, `rank` is set for it, and the outputs' `Tensor.root` to `root`; the
    `TextEncoder` adds more nodes (rewrites found outside egglog) to the same e-graph.
    """
    egraph = EGraph()
    enc = TextEncoder(egraph, prefix="x")
    lines: list[str] = []
    for i, node in enumerate(program.nodes()):
        lines += enc._let(node, f"${let_name(i)}")
    enc.run(lines)
    enc.root(program.outputs)
    return egraph, enc


# ---------------------------------------------------------------- the serialized view


@dataclass(frozen=True, slots=True, eq=False)
class ENode:
    """One tensor e-node of a serialized e-graph, in IR terms.

    **Arguments:**

    - `id`: the serialized node id.
    - `op`: the IR op name (`"root"` for the root).
    - `params`: the IR params.
    - `args`: the e-class ids of the operands.
    - `leaf`: the IR node, for leaves.
    """

    id: str
    op: str
    params: Params
    args: tuple[str, ...]
    leaf: Node | None = None


@dataclass(eq=False)
class EGraphView:
    """A serialized e-graph as tensor e-classes of `ENode`s, with the type of each class.

    Build it with `EGraphView.of(egraph)` after running rules.
    """

    classes: dict[str, list[ENode]]
    lets: dict[str, str]
    types: dict[str, tuple[tuple[int, ...], Any]] = field(default_factory=dict)
    root: str | None = None

    @property
    def num_nodes(self) -> int:
        return sum(len(v) for v in self.classes.values())

    @classmethod
    def of(cls, egraph: EGraph) -> EGraphView:
        data = json.loads(egraph._serialize(split_primitive_outputs=False).to_json())
        return cls.from_json(data)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EGraphView:
        nodes = data["nodes"]
        # A class holding several lets lists them all: "$n3, $x7".
        lets = {
            name.strip().lstrip("$"): c
            for c, v in data.get("class_data", {}).items()
            for name in v.get("let", "").split(",")
            if name.strip()
        }
        parser = _Parser(nodes)
        classes: dict[str, list[ENode]] = {}
        for nid, raw in nodes.items():
            enode = parser.enode(nid, raw)
            if enode is not None:
                classes.setdefault(raw["eclass"], []).append(enode)
        view = cls(classes, lets, root=lets.get("root"))
        view.types = _infer_types(view)
        return view


class _Parser:
    def __init__(self, nodes: dict[str, Any]):
        self.nodes = nodes
        self.class_nodes: dict[str, str] = {}
        for nid, raw in nodes.items():
            self.class_nodes.setdefault(raw["eclass"], nid)
        self._lists: dict[str, tuple[str, ...]] = {}

    def value(self, nid: str) -> Any:
        raw = self.nodes[nid]
        op = raw["op"]
        if op == "Vec":
            return tuple(self.value(c) for c in raw["children"])
        if op.startswith('"'):
            return json.loads(op)
        return int(op)

    def tensor(self, nid: str) -> str:
        return self.nodes[nid]["eclass"]

    def tlist(self, nid: str) -> tuple[str, ...]:
        # A list e-class holds one e-node up to congruence; any one gives equal operands.
        cid = self.nodes[nid]["eclass"]
        if cid not in self._lists:
            raw = self.nodes[self.class_nodes[cid]]
            if raw["op"] == "TList.nil":
                self._lists[cid] = ()
            else:
                tail, head = raw["children"]
                self._lists[cid] = (*self.tlist(tail), self.tensor(head))
        return self._lists[cid]

    def enode(self, nid: str, raw: dict[str, Any]) -> ENode | None:
        op = raw["op"]
        if not op.startswith("Tensor."):
            return None
        kind = op[len("Tensor.") :]
        ch = raw["children"]
        val, ten = self.value, self.tensor
        if kind in ("leaf", "literal"):
            leaf = _LEAVES[val(ch[0])]
            return ENode(nid, leaf.op, leaf.params, (), leaf)
        if kind == "unary":
            return ENode(nid, val(ch[0]), Params(), (ten(ch[1]),))
        if kind == "binary":
            return ENode(nid, val(ch[0]), Params(), (ten(ch[1]), ten(ch[2])))
        if kind == "dot":
            params = _dot_params(val(ch[2]), val(ch[3]))
            return ENode(nid, "dot_general", params, (ten(ch[0]), ten(ch[1])))
        if kind == "reduce":
            return ENode(nid, val(ch[0]), Params(axes=val(ch[2])), (ten(ch[1]),))
        if kind == "transpose":
            return ENode(nid, "transpose", Params(permutation=val(ch[1])), (ten(ch[0]),))
        if kind in ("broadcast", "reshape", "slice"):
            name = "broadcast_in_dim" if kind == "broadcast" else kind
            return ENode(nid, name, _PARAMS[val(ch[1])], (ten(ch[0]),))
        if kind == "convert":
            params = Params(new_dtype=np.dtype(val(ch[1])))
            return ENode(nid, "convert_element_type", params, (ten(ch[0]),))
        if kind == "select":
            return ENode(nid, "select_n", Params(), tuple(ten(c) for c in ch))
        if kind == "concatenate":
            return ENode(nid, "concatenate", Params(dimension=val(ch[1])), self.tlist(ch[0]))
        if kind == "opaque":
            return ENode(nid, "opaque", _PARAMS[val(ch[0])], self.tlist(ch[1]))
        if kind == "tuple_get":
            return ENode(nid, "tuple_get", Params(index=val(ch[1])), (ten(ch[0]),))
        if kind == "op":
            return ENode(nid, val(ch[0]), _PARAMS[val(ch[1])], self.tlist(ch[2]))
        if kind == "root":
            return ENode(nid, "root", Params(), self.tlist(ch[0]))
        raise IRError(f"e-graph node {op!r} has no decoding; is it a Tensor constructor?")


def stand_in(enode: ENode, shape: tuple[int, ...], dtype: Any) -> Node:
    """A node with `enode`'s op, params and the class type, for type rules and costs."""
    return Node(enode.op, (), enode.params, shape, dtype)


def _infer_types(view: EGraphView) -> dict[str, tuple[tuple[int, ...], Any]]:
    """The (shape, dtype) of every tensor e-class, by the registry's type rules."""
    types: dict[str, tuple[tuple[int, ...], Any]] = {}
    reps: dict[str, Node] = {}
    pending = dict(view.classes)
    pending.pop(view.root, None)
    while pending:
        progress = False
        for cid, enodes in list(pending.items()):
            for e in enodes:
                if e.leaf is not None:
                    t = (e.leaf.shape, e.leaf.dtype)
                elif all(a in reps for a in e.args):
                    try:
                        shape, dtype = infer_type(e.op, [reps[a] for a in e.args], e.params)
                    except (ShapeError, IRError):
                        # Rules see ranks, not shapes: distributing A@(B+C) where C's
                        # size-1 dimension broadcasts into the contraction builds an
                        # ill-typed A@C. Such an e-node is never extracted.
                        continue
                    t = (tuple(int(d) for d in shape), dtype)
                else:
                    continue
                types[cid] = t
                reps[cid] = stand_in(e, *t)
                del pending[cid]
                progress = True
                break
        if not progress:
            break  # classes only reachable through cycles: never extracted
    return types


# ---------------------------------------------------------------- decode


def decode(view: EGraphView, choice: dict[str, ENode], program: Program) -> Program:
    """The program that picks `choice[c]` in every e-class `c` reachable from the root.

    **Arguments:**

    - `view`: the serialized e-graph.
    - `choice`: the e-node chosen in each e-class (the root's included).
    - `program`: the encoded program (its inputs and constants are kept).

    **Returns:** the IR `Program`. Raises `IRError` if the choice is cyclic.
    """
    built: dict[str, Node] = {}
    visiting: set[str] = set()

    def build(cid: str) -> Node:
        # Iterative post-order: programs can be thousands of nodes deep.
        stack = [cid]
        while stack:
            c = stack[-1]
            if c in built:
                stack.pop()
                continue
            e = choice[c]
            missing = [a for a in e.args if a not in built]
            if missing:
                if c in visiting:
                    raise IRError(f"the chosen e-nodes form a cycle through e-class {c}")
                visiting.add(c)
                stack.extend(missing)
                continue
            stack.pop()
            visiting.discard(c)
            if e.leaf is not None:
                node = e.leaf
                if node.op == "input":
                    node = program.inputs[node.params["index"]]
            else:
                shape, dtype = view.types[c]
                node = Node(e.op, tuple(built[a] for a in e.args), e.params, shape, dtype)
            built[c] = node
        return built[cid]

    root = choice[view.root]
    outputs = tuple(build(a) for a in root.args)
    return Program(program.inputs, outputs, program.consts)
