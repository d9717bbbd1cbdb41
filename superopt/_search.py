"""The search: an IR program to a ranked list of equivalent candidate programs.

The program is encoded into an e-graph (as egglog text: milliseconds for a thousand
nodes). The Python fusion rules of `rewrites/` look at the program and their facts, one
per tile size when tiling is on, are unioned in; the egglog rule sets then run under a
schedule with a node limit and a time limit (the expansive associative/distributive
rules under a `back_off` scheduler; `superopt._rules`). The e-graph is costed and extracted
(`superopt._extract`), and the rewrites behind each candidate are named: a site where
a fusion fact was added by that fact's rule, any other by replaying the fired rules on
just the site's subterm (cut where reference and candidate share e-classes) and keeping
the fewest that still rewrite it, within a small time budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from egglog import Ruleset

from ._errors import SearchError
from ._extract import (
    CostModelNodes,
    Extraction,
    alternatives,
    extract,
    model_doubts,
    rerank,
    resolve_cost_model,
)
from ._rules import RuleSelection, RuleSpec, build_schedule, rerun, saturate, select_rules
from .ir import Node, Params, Program, toposort
from .ir._egraph import MATMUL, VECMAT, EGraphView, ENode, encode, let_name


@dataclass(frozen=True)
class RewriteStep:
    """One rewrite that turns the reference into a candidate.

    **Arguments:**

    - `rule`: the rule's name.
    - `before`: the subterm it matched, rendered readably.
    - `after`: what it became.
    - `predicted_saving_s`: the model's predicted saving in seconds, if known.
    - `measured_saving_s`: the measured saving in seconds, if measured.
    """

    rule: str
    before: str
    after: str
    predicted_saving_s: float | None = None
    measured_saving_s: float | None = None


@dataclass(frozen=True)
class Candidate:
    """An equivalent program found by the search, with how it was reached."""

    program: Program
    rewrites: tuple[RewriteStep, ...] = ()
    predicted_s: float | None = None
    label: str = "reference"


@dataclass(frozen=True)
class SearchResult:
    """Candidates best first (the reference is always among them) and search statistics."""

    candidates: tuple[Candidate, ...]
    stats: dict[str, float] = field(default_factory=dict)
    note: str = ""


# ---------------------------------------------------------------- rendering subterms

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def term_text(node: Node, depth: int = 6) -> str:
    """A short readable expression of the subterm at `node` (`…` below `depth`)."""
    op, p = node.op, node.params
    if op == "input":
        return f"x{p['index']}"
    if op == "literal":
        return repr(p["value"])
    if op == "const":
        return f"const{list(node.shape)}"
    if depth <= 0:
        return "…"
    args = [term_text(a, depth - 1) for a in node.args]
    if op in _INFIX:
        return f"({args[0]} {_INFIX[op]} {args[1]})"
    if op == "dot_general":
        from .ir._egraph import dn_key

        dn = dn_key(p["dimension_numbers"])
        if dn in (MATMUL, VECMAT):
            return f"({args[0]} @ {args[1]})"
        return f"dot({args[0]}, {args[1]}, {p['dimension_numbers']})"
    if op == "transpose" and node.ndim == 2:
        return f"{args[0]}.T"
    if op in ("reduce_sum", "reduce_max", "reduce_min"):
        return f"{op[7:]}({args[0]}, axes={p['axes']})"
    return f"{op}({', '.join(args)})"


# ---------------------------------------------------------------- which rules did it


@dataclass
class _Site:
    """A top-most e-class where a candidate leaves the reference, cut at shared classes.

    `before` and `after` are the reference and candidate subterms with every e-class
    that both reach (below the site) replaced by the same input leaf, so that a replay
    needs only the few nodes the rewrite touched.
    """

    cid: str
    before: Node
    after: Node
    replay: Program


def _walk_classes(root_classes: Iterable[str], nodes: Iterable[Node], choice: dict[str, ENode]):
    """(class, node) pairs of a program decoded from `choice`, each class once."""
    seen: set[str] = set()
    stack = list(zip(root_classes, nodes))
    while stack:
        cid, node = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        yield cid, node
        stack.extend(zip(choice[cid].args, node.args))


@dataclass
class _Reference:
    """Where the reference program sits in the e-graph (computed once per search)."""

    class_of: dict[int, str | None]  # node id -> its let-bound class
    node_of: dict[str, Node]  # class -> a reference node in it
    outputs: tuple[Node, ...]

    @classmethod
    def of(cls, reference: Program, view: EGraphView) -> _Reference:
        ref_nodes = reference.nodes()
        class_of = {id(n): view.lets.get(let_name(i)) for i, n in enumerate(ref_nodes)}
        node_of: dict[str, Node] = {}
        for node in ref_nodes:
            cid = class_of[id(node)]
            if cid is not None:
                node_of.setdefault(cid, node)
        return cls(class_of, node_of, tuple(reference.outputs))


def _sites(ref: _Reference, view: EGraphView, choice: dict[str, ENode], candidate: Program):
    """The sites where `candidate` differs from the reference, top-most first.

    The two programs are walked side by side from the outputs; a site is where the
    chosen e-node is not the reference node at that position (an e-class can hold
    several reference nodes once a rule proved them equal, as `a + 0` and `a`).
    """
    root = choice[view.root]
    sites: list[_Site] = []
    seen: set[tuple[str, int]] = set()
    stack = list(zip(root.args, ref.outputs, candidate.outputs))
    while stack:
        cid, rnode, cnode = stack.pop()
        if (cid, id(rnode)) in seen:
            continue
        seen.add((cid, id(rnode)))
        e = choice[cid]
        same = (
            e.op == rnode.op
            and e.params == rnode.params
            and e.args == tuple(ref.class_of.get(id(a)) for a in rnode.args)
        )
        if same:
            stack.extend(zip(e.args, rnode.args, cnode.args))
        else:
            sites.append(_cut(cid, rnode, ref, cnode, choice))
    return sites


_CUT_DEPTH = 12  # below this a replay subterm is cut anyway (its replay may then fail)


def _cut(cid: str, before: Node, ref: _Reference, after: Node, choice: dict[str, ENode]) -> _Site:
    leaves: dict[Any, Node] = {}

    def leaf(key: Any, node: Node) -> Node:
        if key not in leaves:
            leaves[key] = Node("input", (), Params(index=len(leaves)), node.shape, node.dtype)
        return leaves[key]

    # The candidate side: stop at reference classes, which both sides reach.
    shared: set[str] = set()
    memo: dict[str, Node] = {}

    def build_after(c: str, node: Node, depth: int) -> Node:
        if c != cid and (c in ref.node_of or depth > _CUT_DEPTH):
            shared.add(c)
            return leaf(c, node)
        if c not in memo:
            if node.op == "input":
                memo[c] = leaf(("input", node.params["index"]), node)
            else:
                args = tuple(
                    build_after(ac, an, depth + 1) for ac, an in zip(choice[c].args, node.args)
                )
                memo[c] = Node(node.op, args, node.params, node.shape, node.dtype)
        return memo[c]

    def build_before(node: Node, depth: int, memo: dict[int, Node]) -> Node:
        c = ref.class_of.get(id(node))
        if node is not before and (c in shared or depth > _CUT_DEPTH):
            return leaf(c, node)
        if node.op == "input":
            return leaf(("input", node.params["index"]), node)
        if id(node) not in memo:
            args = tuple(build_before(a, depth + 1, memo) for a in node.args)
            memo[id(node)] = Node(node.op, args, node.params, node.shape, node.dtype)
        return memo[id(node)]

    a = build_after(cid, after, 0)
    b = build_before(before, 0, {})
    return _Site(cid, before, after, Program(tuple(leaves.values()), (b, a)))


def _reaches(replay: Program, rules: list[Ruleset], iterations: int = 8) -> bool:
    """Whether `rules`, run on output 0 of `replay` alone, produce output 1 in its class.

    Only the left side is put in the e-graph: with both sides in it, a rule running the
    other way (`dot_expand` for `dot_factor_left`) would connect them too.
    """
    before_node, after_node = replay.outputs
    egraph, enc = encode(Program(replay.inputs, (before_node,)))
    before = enc.names[id(before_node)]

    def text(node: Node) -> str:
        name = enc.names.get(id(node))
        return name if name is not None else enc._text(node, [text(a) for a in node.args])

    check = [f"(check (= {before} {text(after_node)}))"]
    schedule = build_schedule(dict(enumerate(rules)), frozenset())
    for _ in range(iterations):
        if not rerun(egraph, schedule).updated:
            break
        try:
            enc.run(check)
            return True
        except Exception:
            continue
    return False


_NAMES_CACHE: dict[tuple[str, tuple[str, ...]], str] = {}


def _name_site(site: _Site, rules: Mapping[str, Ruleset], fired: list[str], deadline: float) -> str:
    """The fewest fired rules that, replayed alone, reach the site's candidate subterm."""
    key = (site.replay.canonical_key(), tuple(fired))
    if key in _NAMES_CACHE:
        return _NAMES_CACHE[key]
    name = "+".join(fired) or "?"
    try:
        for n in fired:
            if time.perf_counter() > deadline:
                return name
            if _reaches(site.replay, [rules[n]]):
                _NAMES_CACHE[key] = n
                return n
        needed = list(fired)
        if len(needed) > 1 and _reaches(site.replay, [rules[n] for n in needed]):
            for n in list(needed):
                if time.perf_counter() > deadline:
                    return "+".join(needed)
                trial = [m for m in needed if m != n]
                if trial and _reaches(site.replay, [rules[m] for m in trial]):
                    needed = trial
            name = "+".join(needed)
    except Exception:
        pass  # a replay that egglog rejects leaves the site named by all fired rules
    if len(_NAMES_CACHE) < 4096:
        _NAMES_CACHE[key] = name
    return name


def rewrite_steps(
    reference: Program | _Reference,
    view: EGraphView,
    choice: dict[str, ENode],
    candidate: Program,
    rules: Mapping[str, Ruleset],
    matches: Mapping[str, int],
    budget_s: float = 1.0,
    facts: Mapping[str, list[tuple[str, Node]]] | None = None,
) -> tuple[RewriteStep, ...]:
    """The rewrites that turn `reference` into `candidate`, each named by its rules.

    A site's rules are the fired rules that, replayed alone on the site's subterm (cut at
    the e-classes the reference and the candidate share), still reach the candidate's
    subterm: a single rule if one does, else a greedy minimal subset, within `budget_s`.
    A site where a fusion fact was added is named by that fact's rule.
    """
    fired = [n for n in sorted(matches, key=lambda n: -matches[n]) if n in rules]
    deadline = time.perf_counter() + budget_s
    steps = []
    ref = reference if isinstance(reference, _Reference) else _Reference.of(reference, view)
    for site in _sites(ref, view, choice, candidate):
        if facts and site.cid in facts:
            name = _fact_name(facts[site.cid], site.after)
        else:
            name = _name_site(site, rules, fired, deadline)
        steps.append(RewriteStep(name, term_text(site.before), term_text(site.after)))
    return tuple(steps)


def _fact_name(facts: list[tuple[str, Node]], after: Node) -> str:
    fused = {n.params.key for n in toposort([after]) if n.op not in _PLAIN}
    for rule, fact_after in facts:
        if fused and fused <= {n.params.key for n in toposort([fact_after])}:
            return rule
    return "+".join(dict.fromkeys(rule for rule, _ in facts))


# Ops that fusion facts wrap their fused op in; the fused op names the tile it uses.
_PLAIN = frozenset({"reshape", "slice", "convert_element_type", "input", "const", "literal"})


@dataclass(frozen=True, eq=False)
class _Fact:
    rule: str
    before: Node
    after: Node


def _unstacked(node: Node) -> tuple[Node, int] | None:
    """`(big, i)` if `node` is `big[i]` written as a unit slice of axis 0 and a reshape."""
    if node.op != "reshape" or node.args[0].op != "slice":
        return None
    sl = node.args[0]
    big, p = sl.args[0], sl.params
    start, limit = p["start_indices"], p["limit_indices"]
    strides = p["strides"] or (1,) * len(start)
    if limit[0] - start[0] != 1 or any(x != 1 for x in strides) or any(start[1:]):
        return None
    if tuple(limit[1:]) != big.shape[1:] or node.shape != big.shape[1:]:
        return None
    return big, start[0]


def _stacked_parts(node: Node) -> tuple[Node, tuple[Node, ...]] | None:
    """`(value, parts)` if `node` stacks `parts` along a new axis 0 (`jnp.stack`)."""
    if node.op == "tuple_get" and node.params["index"] == 0 and node.args[0].op == "opaque":
        eqn = node.args[0].params["eqn"]
        name = getattr(getattr(eqn, "primitive", None), "name", None)
        if name == "stack" and eqn.params.get("axis") == 0:
            return node, node.args[0].args
    if node.op == "concatenate" and node.params["dimension"] == 0:
        parts = []
        for part in node.args:
            if part.op not in ("reshape", "broadcast_in_dim") or part.shape[:1] != (1,):
                return None
            if part.shape[1:] != part.args[0].shape:
                return None
            parts.append(part.args[0])
        return node, tuple(parts)
    return None


def _stack_facts(program: Program, facts: list[Any]) -> list[_Fact]:
    """Stacking every item of one batched fact, in order, gives the batched value back.

    `batch_dots` unions each dot with `big[i]`; a program that stacks the dots again
    (`jnp.stack([x @ w for ...])`) then equals `big` itself, which no rank-level rule can
    see. Each such stack becomes a fact of the rule that made `big`.
    """
    item: dict[int, tuple[Node, int, str]] = {}
    for rw in facts:
        found = _unstacked(rw.after)
        if found is not None:
            item[id(rw.before)] = (*found, rw.rule)
    out = []
    for node in program.nodes() if item else ():
        stacked = _stacked_parts(node)
        if stacked is None or not stacked[1]:
            continue
        value, parts = stacked
        hits = [item.get(id(p)) for p in parts]
        if any(h is None for h in hits):
            continue
        big = hits[0][0]
        if all(h[0] is big and h[1] == i for i, h in enumerate(hits)) and (
            len(hits) == big.shape[0] and value.shape == big.shape and value.dtype == big.dtype
        ):
            out.append(_Fact(hits[0][2], value, big))
    return out


def _fusion_facts(program: Program, selection: RuleSelection) -> list[Any]:
    """The facts the Python fusion rules find, one per tile size when tiling is on."""
    if not selection.fusion:
        return []
    found = [rw for r in selection.fusion for rw in r.find(program)]
    found += _stack_facts(program, found)
    if selection.tiling:
        try:
            from rewrites.tiling import tile_rewrites
        except ModuleNotFoundError:
            return found
        found = tile_rewrites(found)
    return found


# Without timing, a rewrite replaces the original only if the model predicts it at least
# this much faster. Replayed on each corpus program's reference and the model's pick
# (`superopt evaluate --untimed`; costmodel/weights/CARD.md): with no margin the pick was
# more than 5% slower than the reference in 7.3% of the training programs and 16.7% of
# the validation ones; with 0.15, in 1.4% and 9.5%, for a geometric-mean speedup 1.1% and
# 1.7% lower. Held out: 11.0% -> 4.3%, 1.858x -> 1.854x.
MIN_PREDICTED_GAIN = 0.15


def trusted(candidates: Sequence[Candidate]) -> tuple[list[Candidate], str]:
    """`candidates` without the rewrites predicted to gain less than `MIN_PREDICTED_GAIN`
    over the reference (those an untimed choice cannot tell from the model's error), and a
    sentence on the best one left out (`""` if none). Candidates or a reference without a
    prediction are kept."""
    ref = next((c for c in candidates if c.label == "reference"), None)
    if ref is None or ref.predicted_s is None:
        return list(candidates), ""
    bar = ref.predicted_s * (1.0 - MIN_PREDICTED_GAIN)
    kept, dropped = [], []
    for c in candidates:
        close = c is not ref and c.predicted_s is not None and c.predicted_s > bar
        (dropped if close else kept).append(c)
    if not dropped or dropped[0] is not candidates[0]:
        return kept, ""
    best = dropped[0]
    gain = 1.0 - best.predicted_s / ref.predicted_s  # type: ignore[operator]
    return kept, (
        f"the best rewrite ({best.label}) is predicted {gain:.1%} faster than the original "
        f"({_us(best.predicted_s)} against {_us(ref.predicted_s)}), under the "
        f"{MIN_PREDICTED_GAIN:.0%} the cost model's error calls for without timing, so the "
        "original is kept; a budget (budget > 0) times it"
    )


def _us(seconds: float | None) -> str:
    return f"{(seconds or 0.0) * 1e6:.1f} us"


# How many extracted candidates a whole-program model re-scores (enough for every tile
# size of a fused op, one site at a time).
RERANK_POOL = 32


def search(
    program: Program,
    *,
    rules: RuleSpec = None,
    node_limit: int = 50_000,
    time_limit: float = 5.0,
    cost_model: Any = None,
    top_k: int = 8,
) -> SearchResult:
    """Equivalent candidates of `program`, best first.

    **Arguments:**

    - `program`: the reference IR program.
    - `rules`: `None` for every rule family in `rewrites/`, or rule/family names, or a
      mapping of names to egglog rulesets.
    - `node_limit`: stop rewriting once the e-graph holds more e-nodes than this.
    - `time_limit`: stop rewriting after this many seconds.
    - `cost_model`: `None`/`"flops"` (registry FLOPs and bytes), `"learned"`,
      `"analytical"`, a `costmodel.AbstractCostModel`, or an object with
      `score_nodes(signatures) -> seconds` (see `superopt._extract.NodeCostModel`).
    - `top_k`: how many distinct candidates to return at most. With a `costmodel` model
      (`"learned"`, `"analytical"` or a model object), `RERANK_POOL` candidates are
      extracted by their summed e-node costs and re-scored by the model as whole
      programs; the best `top_k` of them are returned.

    **Returns:** a `SearchResult`; the reference is always among the candidates.
    """
    start = time.perf_counter()
    selection = select_rules(rules)
    chosen = selection.egg
    matches: dict[str, int] = {}
    try:
        egraph, enc = encode(program)
        facts = _fusion_facts(program, selection)
        fact_lets: list[tuple[str, str, Node]] = []
        unions = []
        for rw in facts:
            before, after = enc.add([rw.before, rw.after])
            unions.append(f"(union {before} {after})")
            fact_lets.append((before, rw.rule, rw.after))
            base = rw.rule.split("[")[0]
            matches[base] = matches.get(base, 0) + 1
        enc.run(unions)
        stats, egg_matches = saturate(
            egraph, chosen, selection.expansive, node_limit=node_limit, time_limit=time_limit
        )
        for name, n in egg_matches.items():
            matches[name] = matches.get(name, 0) + n
        view = EGraphView.of(egraph)
        node_model = resolve_cost_model(cost_model)
        ex: Extraction = extract(view, node_model)
        # A whole-program model re-scores a larger pool of extracted candidates.
        pool = max(1, top_k, RERANK_POOL if isinstance(node_model, CostModelNodes) else 0)
        found = alternatives(ex, program, pool)
        ref_key = program.canonical_key()
        if isinstance(node_model, CostModelNodes) and all(
            p.canonical_key() != ref_key for _, p, _ in found
        ):
            # Scored in the same batch, the reference gets a prediction to be compared with
            # (`trusted`) even where it ranks outside the candidates returned.
            found.append((float("inf"), program, {}))
        ranked = rerank(found, node_model)
        ref_s = next((c for c, p, _ in ranked if p.canonical_key() == ref_key), None)
        found = ranked[: max(1, top_k)]
    except SearchError:
        raise
    except Exception as err:
        raise SearchError(f"the e-graph search failed on the program: {err}") from err
    by_class: dict[str, list[tuple[str, Node]]] = {}
    for let, rule, after in fact_lets:
        cid = view.lets.get(let.lstrip("$"))
        if cid is not None:
            by_class.setdefault(cid, []).append((rule, after))
    stats.update(
        nodes=view.num_nodes,
        classes=len(view.classes),
        matches=sum(matches.values()),
        fusion_facts=len(facts),
    )
    candidates = []
    naming_deadline = time.perf_counter() + 1.5
    ref = _Reference.of(program, view)
    for rank_i, (cost, prog, choice) in enumerate(found):
        if prog.canonical_key() == ref_key:
            candidates.append(Candidate(program, (), cost, "reference"))
            continue
        budget = max(0.0, naming_deadline - time.perf_counter())
        if rank_i == 0:
            budget = max(budget, 0.5)
        steps = rewrite_steps(
            ref, view, choice, prog, chosen, matches, budget_s=budget, facts=by_class
        )
        candidates.append(Candidate(prog, steps, cost, f"variant{rank_i}"))
    if not any(c.label == "reference" for c in candidates):
        candidates.append(Candidate(program, (), ref_s, "reference"))
    stats["seconds_total"] = time.perf_counter() - start
    note = f"{len(candidates)} candidates; rules fired: " + (
        ", ".join(f"{n}×{k}" for n, k in sorted(matches.items())) or "none"
    )
    # With one candidate there is no ranking to doubt.
    doubts = (
        model_doubts(node_model, [candidates[0].program, program]) if len(candidates) > 1 else ""
    )
    return SearchResult(tuple(candidates), stats, f"{note}; {doubts}" if doubts else note)
