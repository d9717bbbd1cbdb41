"""`superopt.variants`: the distinct equivalent programs the e-graph holds for a function."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._codegen import render, to_callable
from ._search import Candidate, search
from ._trace import Traced, trace
from .ir import Program


@dataclass(frozen=True, eq=False)
class Variant:
    """One equivalent program of a traced function.

    **Arguments:**

    - `program`: the IR program.
    - `fn`: a callable over the same pytree arguments as the original function.
    - `source`: the program as readable JAX source.
    - `rules`: the names of the rules that produced it (empty for the reference).
    - `predicted_cost`: the extraction cost in predicted seconds.
    """

    program: Program
    fn: Callable[..., Any]
    source: str
    rules: tuple[str, ...]
    predicted_cost: float | None


def _wrap(traced: Traced, program: Program) -> Callable[..., Any]:
    flat = to_callable(program)

    def fn(*args: Any) -> Any:
        return traced.unflatten_outputs(flat(*traced.flatten_args(args)))

    return fn


def variants(
    fn: Callable[..., Any],
    *args: Any,
    limit: int = 100,
    rules: Iterable[str] | None = None,
    static_argnums: int | Sequence[int] = (),
    **search_options: Any,
) -> list[Variant]:
    """Distinct equivalent variants of `fn` at `args`, cheapest (predicted) first.

    **Arguments:**

    - `fn`: the function, plain or `jax.jit`-ed.
    - `*args`: example arguments.
    - `limit`: the most variants to return.
    - `rules`: rule or family names (default: every family).
    - `static_argnums`: positions of non-array arguments, as in `superopt.optimize`.
    - `**search_options`: passed on to `superopt._search.search` (`node_limit`, ...).

    **Returns:** a list of at most `limit` `Variant`s. The original program is always among
    them: last, in place of the costliest of the others, when `limit` would leave it out.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive number of variants, got {limit!r}")
    traced = trace(fn, *args, static_argnums=static_argnums)
    result = search(traced.program, rules=rules, top_k=limit, **search_options)
    chosen = list(result.candidates[:limit])
    reference = traced.program.canonical_key()
    if all(c.program.canonical_key() != reference for c in chosen):
        found = [c for c in result.candidates if c.program.canonical_key() == reference]
        chosen[-1] = found[0] if found else Candidate(traced.program)
    out = []
    for cand in chosen:
        names: list[str] = []
        for step in cand.rewrites:
            for name in step.rule.split("+"):
                if name not in names:
                    names.append(name)
        out.append(
            Variant(
                cand.program,
                _wrap(traced, cand.program),
                render(cand.program),
                tuple(names),
                cand.predicted_s,
            )
        )
    return out
