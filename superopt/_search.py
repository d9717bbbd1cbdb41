"""The search: an IR program to a ranked list of equivalent candidate programs.

The e-graph search over the rule sets in `rewrites/` plugs in here. Until a rule set is
enabled, the only candidate is the traced program itself, with no rewrites applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ir import Program


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


def search(program: Program, **options: object) -> SearchResult:
    """Equivalent candidates of `program`, best first."""
    return SearchResult(
        (Candidate(program),),
        note="no rewrite rule sets are enabled: the program is returned round-tripped",
    )
