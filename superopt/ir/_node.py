"""IR nodes and programs: an immutable, typed DAG of tensor operations.

A `Node` is one operation applied to other nodes. Every node knows its output shape and
dtype (an opaque node with several results has a tuple type, read through `tuple_get`).
A `Program` names the input nodes, the output nodes and the constants the nodes refer to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import IRError


class Params(Mapping[str, Any]):
    """An immutable mapping of an op's static parameters, with a stable text key.

    Values are ints, floats, bools, strings, numpy dtypes, tuples of those, or objects
    with a `param_key()` method (used for opaque equations and gather dimension numbers).
    """

    __slots__ = ("_items", "_key")

    def __init__(self, items: Mapping[str, Any] | None = None, /, **kwargs: Any):
        merged = dict(items or {}, **kwargs)
        self._items = dict(sorted(merged.items()))
        self._key: str | None = None

    def __getitem__(self, name: str) -> Any:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Params({self._items!r})"

    def replace(self, **kwargs: Any) -> Params:
        return Params(self._items, **kwargs)

    @property
    def key(self) -> str:
        """A canonical text form: equal parameters give equal keys."""
        if self._key is None:
            self._key = ";".join(f"{k}={param_text(v)}" for k, v in self._items.items())
        return self._key

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Params) and self.key == other.key


def param_text(value: Any) -> str:
    """Canonical text of one parameter value."""
    if hasattr(value, "param_key"):
        return value.param_key()
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(param_text(v) for v in value) + ")"
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, (bool, np.bool_)):
        return repr(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return repr(value)


@dataclass(frozen=True, eq=False, slots=True)
class Node:
    """One operation of the IR.

    **Arguments:**

    - `op`: the registry name of the operation (`"dot_general"`, `"exp"`, ...).
    - `args`: the operand nodes.
    - `params`: static parameters (`Params`).
    - `shape`: the output shape; `()` for a scalar.
    - `dtype`: the output dtype, or `None` for an op with several results.
    """

    op: str
    args: tuple[Node, ...]
    params: Params
    shape: tuple[int, ...]
    dtype: np.dtype | None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return 0 if self.dtype is None else self.size * self.dtype.itemsize

    def __repr__(self) -> str:
        dt = "tuple" if self.dtype is None else self.dtype.name
        return f"Node({self.op}, {dt}{list(self.shape)}, params={self.params.key!r})"


def toposort(roots: tuple[Node, ...] | list[Node]) -> list[Node]:
    """All nodes reachable from `roots`, each after its operands (iterative DFS)."""
    order: list[Node] = []
    seen: set[int] = set()
    for root in roots:
        if id(root) in seen:
            continue
        stack: list[tuple[Node, int]] = [(root, 0)]
        seen.add(id(root))
        while stack:
            node, i = stack[-1]
            if i < len(node.args):
                stack[-1] = (node, i + 1)
                child = node.args[i]
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append((child, 0))
            else:
                stack.pop()
                order.append(node)
    return order


@dataclass(frozen=True, eq=False)
class Program:
    """A whole tensor program: inputs, outputs and the constants its nodes use.

    **Arguments:**

    - `inputs`: the `input` nodes, in argument order (flattened pytree leaves).
    - `outputs`: the result nodes (flattened pytree leaves); one root in the e-graph.
    - `consts`: arrays that `const` nodes refer to by key.
    """

    inputs: tuple[Node, ...]
    outputs: tuple[Node, ...]
    consts: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, node in enumerate(self.inputs):
            if node.op != "input" or node.params["index"] != i:
                raise IRError(f"input {i} of a Program must be `input` node {i}, got {node!r}")

    def nodes(self) -> list[Node]:
        """Every node of the program in topological order."""
        return toposort(list(self.inputs) + list(self.outputs))

    def canonical_key(self) -> str:
        """A hash of the program's structure, parameters, types and constant values."""
        h = hashlib.sha256()
        index: dict[int, int] = {}
        for i, node in enumerate(self.nodes()):
            index[id(node)] = i
            args = ",".join(str(index[id(a)]) for a in node.args)
            dt = "tuple" if node.dtype is None else node.dtype.name
            h.update(f"{node.op}({args})[{node.params.key}]:{dt}{node.shape}\n".encode())
        h.update(("out:" + ",".join(str(index[id(o)]) for o in self.outputs)).encode())
        return h.hexdigest()[:32]

    def count_ops(self) -> dict[str, int]:
        """How many nodes of each op the program has."""
        counts: dict[str, int] = {}
        for node in self.nodes():
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts
