"""Rule sets over the e-graph language of `superopt.ir`, one family a module.

Each family module defines `RULES: dict[str, egglog.Ruleset]` (one ruleset per rule, so
the search can name the rule behind a rewrite) and may define `EXPANSIVE`, the names of
rules to run under a `back_off` scheduler. `rule_families()` gathers the families present.
"""

from __future__ import annotations

import importlib

from egglog import Ruleset

FAMILIES = ("algebra", "fusion", "tiling")


def rule_families() -> dict[str, tuple[dict[str, Ruleset], frozenset[str]]]:
    """Every available family: name to `(rules by name, names of expansive rules)`."""
    out: dict[str, tuple[dict[str, Ruleset], frozenset[str]]] = {}
    for family in FAMILIES:
        try:
            module = importlib.import_module(f"rewrites.{family}")
        except ModuleNotFoundError as err:
            if err.name != f"rewrites.{family}":
                raise
            continue
        rules = getattr(module, "RULES", None)
        if rules:
            out[family] = (dict(rules), frozenset(getattr(module, "EXPANSIVE", ())))
    return out


def all_rules() -> tuple[dict[str, Ruleset], frozenset[str]]:
    """All rules of all families by name, and the names of the expansive ones."""
    rules: dict[str, Ruleset] = {}
    expansive: set[str] = set()
    for family_rules, family_expansive in rule_families().values():
        rules.update(family_rules)
        expansive |= family_expansive
    return rules, frozenset(expansive)
