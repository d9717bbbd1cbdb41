"""The search: an IR program to a ranked list of equivalent candidate programs.

The program is encoded into an e-graph, the rule sets of `rewrites/` run under a schedule
with a node limit and a time limit (the expansive associative/distributive rules under a
`back_off` scheduler), the e-graph is costed and extracted (`superopt._extract`), and the
rewrites behind each candidate are recovered by comparing it with the reference.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from egglog import EGraph, Ruleset, back_off, eq, run, set_

from ._errors import SearchError
from ._extract import Extraction, alternatives, extract
from .ir import Node, Program
from .ir._egraph import (
    MATMUL,
    RANK_ANALYSIS,
    VECMAT,
    EGraphView,
    ENode,
    _encode_node,
    encode,
    let_name,
    rank,
)


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


RuleSpec = None | Iterable[str] | Mapping[str, Ruleset]


_FAMILIES = ("algebra", "fusion", "tiling")


def rule_families() -> dict[str, tuple[dict[str, Ruleset], frozenset[str]]]:
    """Every rule family present in `rewrites/`: name to (rules by name, expansive names)."""
    # Imported module by module: `rewrites` can be a namespace package in an editable
    # install made before it had an `__init__.py`.
    out: dict[str, tuple[dict[str, Ruleset], frozenset[str]]] = {}
    for family in _FAMILIES:
        try:
            module = importlib.import_module(f"rewrites.{family}")
        except ModuleNotFoundError as err:
            if err.name not in (f"rewrites.{family}", "rewrites"):
                raise
            continue
        rules = getattr(module, "RULES", None)
        # Only egglog rulesets run here; a family of another kind is applied elsewhere.
        if isinstance(rules, Mapping) and all(isinstance(r, Ruleset) for r in rules.values()):
            out[family] = (dict(rules), frozenset(getattr(module, "EXPANSIVE", ())))
    return out


def select_rules(rules: RuleSpec) -> tuple[dict[str, Ruleset], frozenset[str]]:
    """The rulesets to run: all by default, or those named (rule or family names)."""
    families = rule_families()
    every: dict[str, Ruleset] = {}
    expansive: set[str] = set()
    for family_rules, family_expansive in families.values():
        every.update(family_rules)
        expansive |= family_expansive
    if rules is None:
        return every, frozenset(expansive)
    if isinstance(rules, Mapping):
        return dict(rules), frozenset(n for n in rules if n in expansive)
    chosen: dict[str, Ruleset] = {}
    for name in [rules] if isinstance(rules, str) else rules:
        if name in families:
            chosen.update(families[name][0])
        elif name in every:
            chosen[name] = every[name]
        else:
            raise SearchError(
                f"unknown rule or rule family {name!r}; known families: {sorted(families)}, "
                f"rules: {sorted(every)}"
            )
    return chosen, frozenset(n for n in chosen if n in expansive)


def _combine(rulesets: Iterable[Ruleset]) -> Any:
    combined = None
    for r in rulesets:
        combined = r if combined is None else combined | r
    return combined


def _decl_names(rules: Mapping[str, Ruleset]) -> dict[Any, str]:
    names: dict[Any, str] = {}
    for name, rs in rules.items():
        rs.__egg_decls_thunk__()
        for decl in rs.__egg_ruleset__.rules:
            names[decl] = name
    return names


def _size(egraph: EGraph) -> int:
    return sum(size for fn, size in egraph.all_function_sizes() if fn is not rank)


_DECLS: dict[int, tuple[Any, Any]] = {}
_SCHEDULES: dict[tuple, Any] = {}


def _rerun(egraph: EGraph, schedule: Any) -> Any:
    # `EGraph.run` merges the schedule's declarations again on every call, which costs
    # about a second for the algebra rules; after the first run they are already there.
    from egglog.egraph import RunReport

    decls = _DECLS.get(id(schedule))
    if decls is None or decls[0] is not schedule:
        decls = _DECLS[id(schedule)] = (schedule, schedule.__egg_decls__)
    egraph._state.__egg_decls__ |= decls[1]
    cmd = egraph._state.run_schedule_to_egg(schedule.schedule)
    (output,) = egraph._run_program(cmd)
    return RunReport._from_bindings(output.report, egraph._state)


def _schedule(rules: Mapping[str, Ruleset], expansive: frozenset[str]) -> Any:
    # Built once per rule selection: egglog-python recomputes a schedule's declarations
    # slowly, so the same schedule object (and its cached declarations) is reused.
    key = tuple(sorted((n, id(r), n in expansive) for n, r in rules.items()))
    if key not in _SCHEDULES:
        plain = _combine(r for n, r in rules.items() if n not in expansive)
        wide = _combine(r for n, r in rules.items() if n in expansive)
        schedule = run(RANK_ANALYSIS).saturate()
        if plain is not None:
            schedule = schedule + run(plain)
        if wide is not None:
            schedule = schedule + run(wide, scheduler=back_off(match_limit=2000, ban_length=3))
        _SCHEDULES[key] = schedule
    return _SCHEDULES[key]


def saturate(
    egraph: EGraph,
    rules: Mapping[str, Ruleset],
    expansive: frozenset[str],
    *,
    node_limit: int,
    time_limit: float,
    max_iterations: int = 40,
) -> tuple[dict[str, float], dict[str, int]]:
    """Run `rules` on `egraph` until saturation or a limit; returns (stats, matches by rule)."""
    schedule = _schedule(rules, expansive)
    names = _decl_names(rules)
    matches: dict[str, int] = {}
    start = time.perf_counter()
    stop, iterations = "saturated", 0
    while True:
        if iterations >= max_iterations:
            stop = "iteration_limit"
            break
        report = _rerun(egraph, schedule)
        iterations += 1
        for decl, n in report.num_matches_per_rule.items():
            if decl in names and n:
                matches[names[decl]] = matches.get(names[decl], 0) + n
        if not report.updated:
            break
        if _size(egraph) > node_limit:
            stop = "node_limit"
            break
        if time.perf_counter() - start > time_limit:
            stop = "time_limit"
            break
    _rerun(egraph, _schedule({}, frozenset()))
    stats = {
        "iterations": iterations,
        "seconds": time.perf_counter() - start,
        "stop_reason": stop,
    }
    return stats, matches


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


def _sites(
    reference: Program, view: EGraphView, choice: dict[str, ENode], candidate: Program
) -> list[tuple[Node, Node]]:
    """(reference subterm, candidate subterm) at each top-most class where they differ."""
    ref_nodes = reference.nodes()
    orig_enode: dict[str, set[str]] = {}
    ref_of_class: dict[str, Node] = {}
    by_class_enode: dict[str, str] = {}
    for cid, enodes in view.classes.items():
        for e in enodes:
            by_class_enode[e.id] = cid
    # The e-node of each reference node: in its let-bound class, over its operands' classes.
    class_of = {id(n): view.lets.get(let_name(i)) for i, n in enumerate(ref_nodes)}
    for node in ref_nodes:
        cid = class_of[id(node)]
        if cid is None:
            continue
        ref_of_class.setdefault(cid, node)
        arg_classes = tuple(class_of[id(a)] for a in node.args)
        for e in view.classes.get(cid, ()):
            if e.op == node.op and e.params == node.params and e.args == arg_classes:
                orig_enode.setdefault(cid, set()).add(e.id)
    cand_of_class: dict[str, Node] = {}
    root = choice[view.root]
    for cid, out in zip(root.args, candidate.outputs):
        cand_of_class[cid] = out
    sites: list[tuple[Node, Node]] = []
    seen: set[str] = set()
    stack = list(zip(root.args, candidate.outputs))
    while stack:
        cid, cnode = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        e = choice[cid]
        if cid in ref_of_class and e.id in orig_enode.get(cid, ()):
            stack.extend(zip(e.args, cnode.args))
        elif cid in ref_of_class:
            sites.append((ref_of_class[cid], cnode))
    return sites


def _reaches(reference: Program, before: Node, after: Node, rules: list[Ruleset]) -> bool:
    """Whether `rules` alone rewrite `before` into `after` (a small replay e-graph)."""
    sub = Program(reference.inputs, (before,), reference.consts)
    egraph, _ = encode(sub)
    before_term = egraph.let("before", _term(before, {}))
    after_term = egraph.let("after", _term(after, {}))
    egraph.register(*_rank_facts(after, {}))
    schedule = _schedule(dict(enumerate(rules)), frozenset())
    for _ in range(8):
        try:
            egraph.check(eq(before_term).to(after_term))
            return True
        except Exception:
            pass
        if not _rerun(egraph, schedule).updated:
            return False
    return False


def _term(node: Node, memo: dict[int, Any]) -> Any:
    if id(node) not in memo:
        memo[id(node)] = _encode_node(node, [_term(a, memo) for a in node.args])
    return memo[id(node)]


def _rank_facts(node: Node, memo: dict[int, Any]) -> list[Any]:
    from egglog import i64

    facts = []
    for n in Program((), (node,)).nodes() if node.op != "input" else [node]:
        if n.dtype is not None:
            facts.append(set_(rank(_term(n, memo))).to(i64(n.ndim)))
    return facts


def rewrite_steps(
    reference: Program,
    view: EGraphView,
    choice: dict[str, ENode],
    candidate: Program,
    rules: Mapping[str, Ruleset],
    matches: Mapping[str, int],
    budget_s: float = 1.0,
) -> tuple[RewriteStep, ...]:
    """The rewrites that turn `reference` into `candidate`, each named by its rules.

    A site's rules are the fired rules that, replayed alone on the reference subterm,
    still reach the candidate subterm (a greedy minimal subset, within `budget_s`).
    """
    fired = [n for n in sorted(matches, key=lambda n: -matches[n]) if n in rules]
    deadline = time.perf_counter() + budget_s
    steps = []
    for before, after in _sites(reference, view, choice, candidate):
        needed = list(fired)
        try:
            if time.perf_counter() < deadline and _reaches(
                reference, before, after, [rules[n] for n in needed]
            ):
                for n in list(needed):
                    if time.perf_counter() > deadline or len(needed) == 1:
                        break
                    trial = [m for m in needed if m != n]
                    if _reaches(reference, before, after, [rules[m] for m in trial]):
                        needed = trial
        except Exception:
            pass  # a replay that egglog rejects leaves the site named by all fired rules
        steps.append(RewriteStep("+".join(needed) or "?", term_text(before), term_text(after)))
    return tuple(steps)


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
    - `cost_model`: `None`/`"flops"` (registry FLOPs and bytes) or an object with
      `score_nodes(signatures) -> seconds` (see `superopt._extract.NodeCostModel`).
    - `top_k`: how many distinct candidates to return at most.

    **Returns:** a `SearchResult`; the reference is always among the candidates.
    """
    start = time.perf_counter()
    chosen, expansive = select_rules(rules)
    try:
        egraph, _ = encode(program)
        stats, matches = saturate(
            egraph, chosen, expansive, node_limit=node_limit, time_limit=time_limit
        )
        view = EGraphView.of(egraph)
        ex: Extraction = extract(view, cost_model)
        found = alternatives(ex, program, max(1, top_k))
    except SearchError:
        raise
    except Exception as err:
        raise SearchError(f"the e-graph search failed on the program: {err}") from err
    stats.update(
        nodes=view.num_nodes,
        classes=len(view.classes),
        matches=sum(matches.values()),
    )
    ref_key = program.canonical_key()
    candidates = []
    for rank_i, (cost, prog, choice) in enumerate(found):
        if prog.canonical_key() == ref_key:
            candidates.append(Candidate(program, (), cost, "reference"))
            continue
        steps = rewrite_steps(
            program, view, choice, prog, chosen, matches, budget_s=1.0 if rank_i == 0 else 0.2
        )
        candidates.append(Candidate(prog, steps, cost, f"variant{rank_i}"))
    if not any(c.label == "reference" for c in candidates):
        candidates.append(Candidate(program, (), None, "reference"))
    stats["seconds_total"] = time.perf_counter() - start
    note = f"{len(candidates)} candidates; rules fired: " + (
        ", ".join(f"{n}×{k}" for n, k in sorted(matches.items())) or "none"
    )
    return SearchResult(tuple(candidates), stats, note)
