"""Rule sets over the e-graph language of `superopt.ir`, one family a module.

A family module defines `RULES`, either

- a `dict[str, egglog.Ruleset]` (one ruleset per rule, so the search can name the rule
  behind a rewrite), with `EXPANSIVE`, the names of rules to run under a `back_off`
  scheduler (`algebra`); or
- a sequence of Python rule objects with a `name` and `find(program) -> rewrites`, whose
  facts (`rule`, `before`, `after`) the search unions into the e-graph (`fusion`).

`tiling` has no rules of its own: it expands fused facts to one per tile size. The search
(`superopt._search.select_rules`) gathers the families present.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

FAMILIES = ("algebra", "fusion", "tiling")


def rule_families() -> dict[str, tuple[dict[str, Any], frozenset[str]]]:
    """Every available family: name to `(rules by name, names of expansive rules)`."""
    out: dict[str, tuple[dict[str, Any], frozenset[str]]] = {}
    for family in FAMILIES:
        try:
            module = importlib.import_module(f"rewrites.{family}")
        except ModuleNotFoundError as err:
            if err.name != f"rewrites.{family}":
                raise
            continue
        rules = getattr(module, "RULES", None)
        if isinstance(rules, Mapping):
            out[family] = (dict(rules), frozenset(getattr(module, "EXPANSIVE", ())))
        elif rules:
            out[family] = ({r.name: r for r in rules}, frozenset())
    return out


def all_rules() -> tuple[dict[str, Any], frozenset[str]]:
    """All rules of all families by name, and the names of the expansive ones."""
    rules: dict[str, Any] = {}
    expansive: set[str] = set()
    for family_rules, family_expansive in rule_families().values():
        rules.update(family_rules)
        expansive |= family_expansive
    return rules, frozenset(expansive)
