"""Extraction: the cheapest program in a saturated e-graph, and distinct alternatives.

After saturation every tensor e-node is reduced to a `Signature` (op, params, operand and
result types). The distinct signatures are scored in one batch by a cost model (the
registry's FLOP + byte count by default; a learned model plugs in through
`NodeCostModel.score_nodes`). Extraction then runs Python-side over the serialized
e-graph: a fixpoint of per-class tree costs picks one e-node per class, and every
candidate program is finally costed DAG-aware (a shared subterm counts once).
egglog's `set_cost` needs an expression for each child e-class, which the serialized
e-graph does not give us cheaply, so the choice is made here instead of in Rust.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .ir import Node, Program, node_cost
from .ir._egraph import EGraphView, ENode, decode, stand_in
from .ir._errors import IRError, ShapeError

# A tiny per-node charge: among equal-cost choices prefer fewer ops, and no zero-cost cycle.
_EPS_S = 1e-9


@dataclass(frozen=True, slots=True)
class Signature:
    """What an e-node's cost may depend on.

    **Arguments:**

    - `op`: the IR op name.
    - `params`: its `Params`.
    - `arg_types`: `(shape, dtype)` of each operand.
    - `out_type`: `(shape, dtype)` of the result (dtype `None` for tuples).
    """

    op: str
    params: Any
    arg_types: tuple[tuple[tuple[int, ...], Any], ...]
    out_type: tuple[tuple[int, ...], Any]

    def node(self) -> Node:
        """A stand-alone IR node with this signature (operands are inputs)."""
        args = tuple(
            Node("input", (), _index(i), shape, dtype)
            for i, (shape, dtype) in enumerate(self.arg_types)
        )
        return Node(self.op, args, self.params, *self.out_type)


def _index(i: int) -> Any:
    from .ir import Params

    return Params(index=i)


@runtime_checkable
class NodeCostModel(Protocol):
    """Anything that predicts the seconds of a batch of e-node signatures."""

    def score_nodes(self, signatures: Sequence[Signature]) -> np.ndarray:
        """Predicted seconds of each signature, as a float array of the same length."""
        ...


class FlopCostModel:
    """The default cost: registry FLOPs and bytes over a nominal peak (a roofline sum).

    **Arguments:**

    - `flops_per_s`: nominal peak FLOP/s.
    - `bytes_per_s`: nominal memory bandwidth.
    """

    def __init__(self, flops_per_s: float = 1e11, bytes_per_s: float = 2e10):
        self.flops_per_s = flops_per_s
        self.bytes_per_s = bytes_per_s

    def score_nodes(self, signatures: Sequence[Signature]) -> np.ndarray:
        out = np.zeros(len(signatures))
        for i, sig in enumerate(signatures):
            if sig.op == "root":
                continue
            cost = node_cost(sig.node())
            out[i] = (
                cost.flops + cost.transcendentals
            ) / self.flops_per_s + cost.bytes / self.bytes_per_s
        return out


def resolve_cost_model(cost_model: Any) -> NodeCostModel:
    """`None` or `"flops"` to `FlopCostModel()`; a `NodeCostModel` as is."""
    if cost_model is None or cost_model == "flops":
        return FlopCostModel()
    if isinstance(cost_model, NodeCostModel):
        return cost_model
    raise TypeError(
        f"cost_model {cost_model!r} is neither None, 'flops' nor an object with a "
        "`score_nodes(signatures) -> array of seconds` method"
    )


@dataclass
class Extraction:
    """The costed e-graph: the own cost of every e-node and the best choice per class."""

    view: EGraphView
    own: dict[str, float]  # e-node id -> seconds
    best: dict[str, ENode]  # class -> cheapest e-node (tree cost)
    cost: dict[str, float]  # class -> tree cost

    def program(self, choice: dict[str, ENode], reference: Program) -> Program:
        return decode(self.view, choice, reference)

    def dag_cost(self, choice: dict[str, ENode]) -> float:
        """Seconds of the chosen program, each reachable class counted once."""
        seen: set[str] = set()
        stack = list(choice[self.view.root].args)
        total = 0.0
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            e = choice[c]
            total += self.own[e.id]
            stack.extend(e.args)
        return total


def signatures(view: EGraphView) -> tuple[list[Signature], dict[str, int]]:
    """The distinct signatures of the typed e-nodes, and each e-node's index among them."""
    sigs: dict[tuple, int] = {}
    order: list[Signature] = []
    index: dict[str, int] = {}
    types = view.types
    for cid, enodes in view.classes.items():
        if cid == view.root:
            continue
        out = types.get(cid)
        if out is None:
            continue
        for e in enodes:
            if any(a not in types for a in e.args):
                continue
            arg_types = tuple(types[a] for a in e.args)
            key = (e.op, e.params.key, arg_types, out)
            k = sigs.get(key)
            if k is None:
                k = sigs[key] = len(order)
                order.append(Signature(e.op, e.params, arg_types, out))
            index[e.id] = k
    return order, index


def _well_typed(view: EGraphView, e: ENode, cid: str) -> bool:
    # A rule can union e-nodes whose dtypes only disagree (mixed precision); never pick one.
    if e.leaf is not None:
        return True
    try:
        from .ir import infer_type

        reps = [stand_in(e, *view.types[a]) for a in e.args]
        shape, dtype = infer_type(e.op, reps, e.params)
    except (ShapeError, KeyError, IRError):
        return False
    return (tuple(int(d) for d in shape), dtype) == view.types[cid]


def extract(view: EGraphView, cost_model: Any = None) -> Extraction:
    """Score every e-node in one batch and pick the cheapest e-node of each class.

    **Arguments:**

    - `view`: the serialized e-graph (`EGraphView.of(egraph)`).
    - `cost_model`: `None`/`"flops"` or a `NodeCostModel`.

    **Returns:** an `Extraction`; `best` covers every class that has a finite cost.
    """
    model = resolve_cost_model(cost_model)
    sigs, index = signatures(view)
    scores = np.asarray(model.score_nodes(sigs), dtype=float) if sigs else np.zeros(0)
    own: dict[str, float] = {}
    parents: dict[str, list[tuple[str, ENode]]] = {}
    for cid, enodes in view.classes.items():
        for e in enodes:
            if e.op == "root":
                own[e.id] = 0.0
            elif e.id in index and _well_typed(view, e, cid):
                own[e.id] = float(scores[index[e.id]]) + _EPS_S
            else:
                continue
            for a in set(e.args):
                parents.setdefault(a, []).append((cid, e))
    cost: dict[str, float] = {}
    best: dict[str, ENode] = {}
    heap: list[tuple[float, int, str, ENode]] = []
    tie = 0
    for cid, enodes in view.classes.items():
        for e in enodes:
            if not e.args and e.id in own:
                heap.append((own[e.id], tie, cid, e))
                tie += 1
    heapq.heapify(heap)
    # Dijkstra-like (costs are sums of non-negative parts): a class is final when popped.
    while heap:
        c_cost, _, cid, e = heapq.heappop(heap)
        if cid in cost:
            continue
        cost[cid] = c_cost
        best[cid] = e
        for pcid, pe in parents.get(cid, ()):
            if pcid in cost or pe.id not in own:
                continue
            if all(a in cost for a in pe.args):
                total = own[pe.id] + sum(cost[a] for a in set(pe.args))
                heapq.heappush(heap, (total, tie, pcid, pe))
                tie += 1
    if view.root not in best:
        raise IRError("no well-typed program could be extracted from the e-graph")
    return Extraction(view, own, best, cost)


def alternatives(
    ex: Extraction, reference: Program, limit: int
) -> list[tuple[float, Program, dict[str, ENode]]]:
    """Up to `limit` distinct programs, cheapest first: the best, then one-site changes.

    Each alternative forces one other e-node in one class of the best program (its
    operands keep their best choices); cyclic or duplicate programs are skipped.
    """
    best_choice = dict(ex.best)
    results: dict[str, tuple[float, Program, dict[str, ENode]]] = {}
    prog = ex.program(best_choice, reference)
    results[prog.canonical_key()] = (ex.dag_cost(best_choice), prog, best_choice)
    order: list[str] = []
    seen: set[str] = set()
    stack = [ex.view.root]
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        order.append(c)
        stack.extend(reversed(best_choice[c].args))
    tries = 0
    for cid in order:
        for e in ex.view.classes[cid]:
            if len(results) >= limit or tries >= 4 * limit + 16:
                break
            if e is best_choice[cid] or e.id not in ex.own or any(a not in ex.cost for a in e.args):
                continue
            tries += 1
            choice = dict(best_choice)
            choice[cid] = e
            try:
                alt = ex.program(choice, reference)
            except IRError:
                continue
            key = alt.canonical_key()
            if key not in results:
                results[key] = (ex.dag_cost(choice), alt, choice)
    return sorted(results.values(), key=lambda r: r[0])[:limit]
