"""The rules a search runs, and running them: which rule sets of `rewrites/` a search
selects (all, or those named), and saturating an e-graph with them under a schedule with a
node limit and a time limit (the expansive associative/distributive rules under a
`back_off` scheduler).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from egglog import EGraph, Ruleset, back_off, run, unstable_combine_rulesets

from ._errors import SearchError
from .ir._egraph import RANK_ANALYSIS, rank

RuleSpec = None | Iterable[str] | Mapping[str, Ruleset]


_FAMILIES = ("algebra", "fusion", "tiling")


@dataclass(frozen=True)
class RuleSelection:
    """The rules one search runs.

    **Arguments:**

    - `egg`: egglog rulesets by name (run by saturation).
    - `expansive`: the names among `egg` to run under `back_off`.
    - `fusion`: Python rule objects (`name`, `find(program) -> rewrites`) whose facts are
      added to the e-graph as unions before saturation (`rewrites.fusion`).
    - `tiling`: whether fused facts are expanded to one per tile size (`rewrites.tiling`).
    """

    egg: dict[str, Ruleset]
    expansive: frozenset[str] = frozenset()
    fusion: tuple[Any, ...] = ()
    tiling: bool = False


def _family(module: Any) -> tuple[dict[str, Any], frozenset[str]] | None:
    rules = getattr(module, "RULES", None)
    if isinstance(rules, Mapping):
        return dict(rules), frozenset(getattr(module, "EXPANSIVE", ()))
    if isinstance(rules, (tuple, list)) and all(hasattr(r, "name") for r in rules):
        return {r.name: r for r in rules}, frozenset()
    return None


def rule_families() -> dict[str, tuple[dict[str, Any], frozenset[str]]]:
    """Every rule family present in `rewrites/`: name to (rules by name, expansive names).

    A family's rules are egglog rulesets (run by saturation) or Python rule objects with
    `name` and `find(program)` (their facts are unioned into the e-graph); tiling is a
    family without rules of its own, present when `rewrites.tiling` is.
    """
    # Imported module by module: `rewrites` can be a namespace package in an editable
    # install made before it had an `__init__.py`.
    out: dict[str, tuple[dict[str, Any], frozenset[str]]] = {}
    for family in _FAMILIES:
        try:
            module = importlib.import_module(f"rewrites.{family}")
        except ModuleNotFoundError as err:
            if err.name not in (f"rewrites.{family}", "rewrites"):
                raise
            continue
        found = _family(module)
        if found is not None:
            out[family] = found
        elif family == "tiling" and hasattr(module, "tile_rewrites"):
            out[family] = ({}, frozenset())
    return out


def select_rules(rules: RuleSpec) -> RuleSelection:
    """The rules to run: all by default, or those named (rule or family names)."""
    families = rule_families()
    every: dict[str, Any] = {}
    expansive: set[str] = set()
    for family_rules, family_expansive in families.values():
        every.update(family_rules)
        expansive |= family_expansive
    if rules is None:
        chosen, tiling = every, "tiling" in families
    elif isinstance(rules, Mapping):
        chosen, tiling = dict(rules), False
    else:
        chosen, tiling = {}, False
        for name in [rules] if isinstance(rules, str) else rules:
            if name in families:
                chosen.update(families[name][0])
                tiling = tiling or name == "tiling"
            elif name in every:
                chosen[name] = every[name]
            else:
                raise SearchError(
                    f"unknown rule or rule family {name!r}; known families: "
                    f"{sorted(families)}, rules: {sorted(every)}"
                )
    egg = {n: r for n, r in chosen.items() if isinstance(r, Ruleset)}
    fusion = tuple(r for r in chosen.values() if not isinstance(r, Ruleset))
    return RuleSelection(egg, frozenset(n for n in egg if n in expansive), fusion, tiling)


def _combine(rulesets: Iterable[Ruleset]) -> Any:
    # Flat, not `a | b | c`: egglog builds a combination's declarations from each part's
    # twice, so a nested chain of n rule sets costs 2^n; at the twelve plain algebra rules
    # that was 0.7 s of a process's first search.
    rulesets = list(rulesets)
    if len(rulesets) <= 1:
        return rulesets[0] if rulesets else None
    return unstable_combine_rulesets(*rulesets)


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


def rerun(egraph: EGraph, schedule: Any) -> Any:
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


def build_schedule(rules: Mapping[str, Ruleset], expansive: frozenset[str]) -> Any:
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
    schedule = build_schedule(rules, expansive)
    names = _decl_names(rules)
    matches: dict[str, int] = {}
    start = time.perf_counter()
    stop, iterations = "saturated", 0
    while True:
        if iterations >= max_iterations:
            stop = "iteration_limit"
            break
        report = rerun(egraph, schedule)
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
    rerun(egraph, build_schedule({}, frozenset()))
    stats = {
        "iterations": iterations,
        "seconds": time.perf_counter() - start,
        "stop_reason": stop,
    }
    return stats, matches
