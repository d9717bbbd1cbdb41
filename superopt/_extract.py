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

from .ir import Node, Program, get_op, node_cost
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


# Ops XLA fuses into their neighbours: they launch no kernel of their own.
_FUSED_AWAY = frozenset(
    {"reshape", "broadcast_in_dim", "slice", "squeeze", "expand_dims", "convert_element_type",
     "transpose", "select_n", "literal", "input", "const", "iota", "tuple_get"}
)  # fmt: skip


class FlopCostModel:
    """The default cost: registry FLOPs and bytes over a nominal peak (a roofline sum),
    plus a fixed launch cost for each op that XLA runs as a kernel of its own.

    **Arguments:**

    - `flops_per_s`: nominal peak FLOP/s.
    - `bytes_per_s`: nominal memory bandwidth.
    - `launch_s`: seconds charged per kernel (dots, reductions, concatenations, ...;
      elementwise and layout ops are fused by XLA and charged nothing).
    """

    def __init__(
        self, flops_per_s: float = 1e11, bytes_per_s: float = 2e10, launch_s: float = 2e-6
    ):
        self.flops_per_s = flops_per_s
        self.bytes_per_s = bytes_per_s
        self.launch_s = launch_s

    def score_nodes(self, signatures: Sequence[Signature]) -> np.ndarray:
        out = np.zeros(len(signatures))
        for i, sig in enumerate(signatures):
            if sig.op == "root":
                continue
            cost = node_cost(sig.node())
            out[i] = (
                cost.flops + cost.transcendentals
            ) / self.flops_per_s + cost.bytes / self.bytes_per_s
            if sig.op not in _FUSED_AWAY and not get_op(sig.op).elementwise:
                out[i] += self.launch_s
        return out


class CostModelNodes:
    """A `costmodel` model (learned or analytical) as a `NodeCostModel`.

    **Arguments:**

    - `model`: a `costmodel.AbstractCostModel` (`score_nodes(opcodes, features)`).
    """

    def __init__(self, model: Any):
        self.model = model

    def score_nodes(self, signatures: Sequence[Signature]) -> np.ndarray:
        from costmodel.features import NodeSignature, featurize_signatures

        sigs = [NodeSignature(s.op, s.params, s.arg_types, *s.out_type) for s in signatures]
        opcodes, features = featurize_signatures(sigs)
        return np.asarray(self.model.score_nodes(opcodes, features), dtype=float)


def resolve_cost_model(cost_model: Any) -> NodeCostModel:
    """The e-node cost model named by `cost_model`.

    **Arguments:**

    - `cost_model`: `None` or `"flops"` (`FlopCostModel()`), `"learned"` (the shipped
      weights of this backend, or the analytical model where they are missing) or
      `"analytical"`, a `costmodel.AbstractCostModel`, or a `NodeCostModel`.

    **Returns:** a `NodeCostModel`.
    """
    check_cost_model(cost_model)
    if cost_model is None or cost_model == "flops":
        return FlopCostModel()
    if isinstance(cost_model, str):
        from ._predict import resolve_model

        return CostModelNodes(resolve_model(cost_model, fallback=True)[0])
    if _is_costmodel(cost_model):
        return CostModelNodes(cost_model)
    return cost_model


def check_cost_model(cost_model: Any) -> None:
    """Raise `ValueError` (an unknown name) or `TypeError` unless `cost_model` is something
    `resolve_cost_model` takes (without loading any weights)."""
    names = ("flops", "learned", "analytical")
    if cost_model is None or (isinstance(cost_model, str) and cost_model in names):
        return
    if isinstance(cost_model, str):
        raise ValueError(f"unknown cost_model {cost_model!r}: use one of {', '.join(names)}")
    if isinstance(cost_model, NodeCostModel) or _is_costmodel(cost_model):
        return
    raise TypeError(
        f"cost_model {cost_model!r} is neither None, 'flops', 'learned', 'analytical', a "
        "costmodel.AbstractCostModel nor an object with a "
        "`score_nodes(signatures) -> array of seconds` method"
    )


def _is_costmodel(obj: Any) -> bool:
    try:
        from costmodel.model import AbstractCostModel
    except ImportError:
        return False
    return isinstance(obj, AbstractCostModel)


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

        # Operands stand in as their own class (tuple_get reads its opaque operand's params).
        reps = [stand_in(view.classes[a][0], *view.types[a]) for a in e.args]
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


def _reachable(view: EGraphView, choice: dict[str, ENode]) -> list[str]:
    order: list[str] = []
    seen: set[str] = set()
    stack = [view.root]
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        order.append(c)
        stack.extend(reversed(choice[c].args))
    return order


def _acyclic(view: EGraphView, choice: dict[str, ENode]) -> bool:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    stack: list[tuple[str, bool]] = [(view.root, False)]
    while stack:
        c, done = stack.pop()
        if done:
            state[c] = 2
            continue
        if state.get(c) == 2:
            continue
        if state.get(c) == 1:
            return False
        state[c] = 1
        stack.append((c, True))
        for a in choice[c].args:
            if state.get(a) == 1:
                return False
            if state.get(a) != 2:
                stack.append((a, False))
    return True


def share(ex: Extraction, choice: dict[str, ENode], rounds: int = 4) -> dict[str, ENode]:
    """Improve `choice` by switching several classes at once onto a shared new subterm.

    Per-class (tree) costs charge a shared subterm to every user, so a rewrite that pays
    off only when many classes share it (k dots batched into one) is never chosen class
    by class. Here, for each e-class `x` outside the chosen program, every chosen class
    that has an e-node reaching `x` switches to it together; the switch is kept when the
    whole program's DAG cost drops.

    **Arguments:**

    - `ex`: the extraction.
    - `choice`: a complete choice (e.g. `ex.best`).
    - `rounds`: the most switches made.

    **Returns:** the improved choice (a new dict).
    """
    view = ex.view
    choice = dict(choice)
    current = ex.dag_cost(choice)
    for _ in range(rounds):
        in_program = set(_reachable(view, choice))
        groups: dict[str, dict[str, ENode]] = {}
        for cid in in_program:
            for e in view.classes[cid]:
                if e is choice[cid] or e.id not in ex.own or any(a not in ex.cost for a in e.args):
                    continue
                # The classes this e-node would add, through the best choices below it.
                new: set[str] = set()
                stack = [a for a in e.args if a not in in_program]
                while stack and len(new) < 256:
                    c = stack.pop()
                    if c in new:
                        continue
                    new.add(c)
                    stack.extend(a for a in ex.best[c].args if a not in in_program)
                for x in new:
                    groups.setdefault(x, {}).setdefault(cid, e)
        improved = False
        tried: set[frozenset] = set()
        for members in sorted(groups.values(), key=len, reverse=True):
            if len(members) < 2:
                break
            key = frozenset(e.id for e in members.values())
            if key in tried:
                continue
            tried.add(key)
            trial = dict(choice)
            trial.update(members)
            cost = ex.dag_cost(trial)
            if cost < current * (1 - 1e-9):
                if not _acyclic(view, trial):
                    continue
                choice, current, improved = trial, cost, True
                break
        if not improved:
            break
    return choice


def alternatives(
    ex: Extraction, reference: Program, limit: int
) -> list[tuple[float, Program, dict[str, ENode]]]:
    """Up to `limit` distinct programs, cheapest first: the best, then one-site changes.

    Each alternative forces one other e-node in one class of the best program (its
    operands keep their best choices); cyclic or duplicate programs are skipped.
    """
    tree_best = dict(ex.best)
    best_choice = share(ex, tree_best)
    results: dict[str, tuple[float, Program, dict[str, ENode]]] = {}
    for choice in (best_choice, tree_best):
        prog = ex.program(choice, reference)
        results.setdefault(prog.canonical_key(), (ex.dag_cost(choice), prog, choice))
    tries = 0
    for cid in _reachable(ex.view, best_choice):
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


def rerank(
    found: Sequence[tuple[float, Program, dict[str, ENode]]], cost_model: NodeCostModel
) -> list[tuple[float, Program, dict[str, ENode]]]:
    """`found` ordered by a whole-program model's predicted seconds, if `cost_model` wraps
    one (a `costmodel` model); otherwise unchanged.

    Extraction sums per-e-node costs; a whole-program model also sees how the nodes sit
    together (what runs in a loop, what XLA fuses), so it re-scores the extracted
    candidates as wholes. The cost of each candidate becomes its predicted seconds.
    Candidates are not compiled here, so the roofline inside the model estimates bytes
    from the graph instead of asking XLA (`predict_runtime` asks, and can differ).
    """
    if not isinstance(cost_model, CostModelNodes) or len(found) < 2:
        return list(found)
    from costmodel.features import featurize_program

    seconds = np.asarray(
        cost_model.model.score_programs([featurize_program(p) for _, p, _ in found]), float
    )
    order = np.argsort(seconds, kind="stable")
    return [(float(seconds[i]), found[i][1], found[i][2]) for i in order]


def model_doubts(cost_model: NodeCostModel, programs: Sequence[Program]) -> str:
    """A sentence on why a learned model's ranking of `programs` (the candidates that
    matter: its pick and the reference) is rough, or `""`: ops no training program had,
    or networks that disagree by more than they did on any validation program
    (`LearnedCostModel.uncertain_spread`)."""
    if not isinstance(cost_model, CostModelNodes) or not programs:
        return ""
    from costmodel.features import featurize_program
    from costmodel.model import LearnedCostModel

    model = cost_model.model
    if not isinstance(model, LearnedCostModel):
        return ""
    graphs = [featurize_program(p) for p in programs]
    untrained = sorted({op for g in graphs for op in model.untrained(g)})
    spread = float(np.max(model.spread(graphs), initial=0.0))  # NaN for one network
    doubts = []
    if untrained:
        doubts.append(f"has not learned the cost of {', '.join(untrained)}")
    if spread > model.uncertain_spread:
        lean = " (its prediction leans on the roofline)" if model.fallback is not None else ""
        doubts.append(f"has networks that disagree by {spread:.0%} here{lean}")
    if not doubts:
        return ""
    return (
        f"the learned cost model {' and '.join(doubts)}, so its ranking is rough: timing "
        "candidates (budget > 0) settles it"
    )
