"""The public entry points: `superopt.optimize` and `@superopt.jit`.

`optimize` runs the whole pipeline — trace, search, codegen, verify, optionally measure —
and returns an `Optimized` callable with a `Report`. The rule it never breaks: a function
that ran before still runs afterwards and computes the same thing. Anything superopt
cannot handle (a search error, a codegen error, a candidate that fails verification, a
program the IR cannot carry) makes it fall back to the original function, with the reason
in the report. So does a search that finds nothing better: what comes back unchanged is the
original function itself. Only bad *input* is an error: something that is not callable, or
example arguments the function cannot be traced with.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import itertools
import json
import keyword
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import _cache, _tune, _verify
from ._codegen import render, to_callable
from ._errors import CacheError, SearchError, SignatureError, TraceError
from ._extract import check_cost_model
from ._leaves import close_over_static
from ._report import Report, verdict_dict
from ._rules import select_rules
from ._search import MIN_PREDICTED_GAIN, Candidate, SearchResult, search, trusted
from ._trace import ArgSpec, Traced, split_arguments, static_positions, trace
from .ir import Program

# Verification of a candidate runs the user's inputs and at least one random input set,
# then the other random sets (three in all) only while it has spent less than this: a
# program that takes half a second a call is not run a dozen times to optimize it.
VERIFY_BUDGET_S = 2.0

_NOT_CALLABLE_MSG = (
    "superopt.optimize needs a function to optimize, got {kind} {value!r}. Pass the function "
    "itself, then its example arguments: `superopt.optimize(f, x, w)`."
)


class Optimized:
    """A drop-in replacement for an optimized function, with its report.

    Calling it takes the same arguments as the original (pytrees in and out, static
    arguments in the same positions) with the shapes and dtypes it was optimized for;
    other shapes raise `SignatureError`. The example call passed its arguments by
    position, and those are the ones it takes: each by position, or by the name of its
    parameter where the original's signature has one (`opt(x, w=w)`). A parameter the
    example call did not pass keeps its default: passing it (a keyword-only one, say)
    raises `SignatureError`; `@superopt.jit` takes keyword arguments as `jax.jit` does.
    The call is jitted and works under `jax.grad`, `jax.vmap` and `jax.jit`. A rewritten
    program keeps the custom differentiation rules (`jax.custom_jvp`, `jax.custom_vjp`) of
    the original as calls that carry them, except those JAX itself defines (`jax.nn.relu`,
    `jax.nn.silu`, ...), which are inlined so that rewrites see through them: where such a
    rule picks a value (relu's gradient at exactly 0) the derivative can differ. A function
    returned unchanged is the original, rules and all.

    **Attributes:**

    - `report`: the `Report` (print it, or `report.to_json()`).
    - `source`: the winning program as readable JAX source (what actually runs).
    - `program`: the winning IR `Program`, or `None` if the original function is used.
    - `reference`: the original function.
    """

    def __init__(
        self,
        reference: Callable[..., Any],
        traced: Traced,
        program: Program | None,
        call: Callable[..., Any],
        report: Report,
        source: str,
    ):
        self._reference = reference
        self._traced = traced
        self._program = program
        if program is None:
            # The original function, behind the same signature check as a program.
            original = call

            def call(*args: Any) -> Any:
                traced.flatten_args(args)
                return original(*args)

            call = traced.jit_checked(call)
        self._call = call
        self._report = report
        self._source = source
        try:
            functools.update_wrapper(self, reference, updated=())
        except (AttributeError, TypeError):
            pass

    @property
    def report(self) -> Report:
        return self._report

    @property
    def source(self) -> str:
        return self._source

    @property
    def program(self) -> Program | None:
        return self._program

    @property
    def reference(self) -> Callable[..., Any]:
        return self._reference

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            args = self._bind(args, kwargs)
        return self._call(*args)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """`args` with `kwargs` put in the positions of their parameters, those the example
        call passed by position; a position left out takes its parameter's default."""
        layout = self._positional_parameters
        name = _function_name(self._reference)
        if layout is None:
            raise SignatureError(
                f"{name} has no signature superopt can read, so its optimized version takes "
                f"arguments by position only, got keyword argument {next(iter(kwargs))!r}"
            )
        signature, params, nargs = layout
        full: list[Any] = [*args, *[_UNSET] * (nargs - len(args))]
        for key, value in kwargs.items():
            param = signature.parameters.get(key)
            i = next((i for i, p in enumerate(params) if p.name == key), None)
            if param is not None and param.kind is inspect.Parameter.POSITIONAL_ONLY:
                problem = f"{key!r} is a positional-only parameter of {name}"
            elif param is not None and param.kind is inspect.Parameter.KEYWORD_ONLY:
                problem = (f"{key!r} is a keyword-only parameter of {name}, which the example "
                           "call left at its default")  # fmt: skip
            elif i is None and any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
                problem = (f"keyword argument {key!r} would go to the **keywords of {name}, "
                           "which the example call left empty")  # fmt: skip
            elif i is None:
                problem = f"{name}() got an unexpected keyword argument {key!r}"
            elif i < len(args):
                problem = f"{name}() got argument {key!r} both by position and by keyword"
            elif i >= nargs:
                problem = (f"{key!r} is not among the arguments of the example call, which "
                           "left it at its default")  # fmt: skip
            else:
                full[i] = value
                continue
            raise SignatureError(f"{problem}; {_accepts(name, params, nargs)}")
        for i in range(len(args), nargs):
            if full[i] is _UNSET:
                default = params[i].default if i < len(params) else inspect.Parameter.empty
                if default is inspect.Parameter.empty:
                    what = repr(params[i].name) if i < len(params) else f"at position {i}"
                    raise SignatureError(
                        f"{name}() is missing argument {what}; {_accepts(name, params, nargs)}"
                    )
                full[i] = default
        return tuple(full)

    @functools.cached_property
    def _positional_parameters(
        self,
    ) -> tuple[inspect.Signature, list[inspect.Parameter], int] | None:
        """The reference's signature, its parameters that take a position, and how many
        positional arguments the example call passed; `None` without a signature."""
        try:
            signature = inspect.signature(self._reference)
        except (TypeError, ValueError):
            return None
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = list(
            itertools.takewhile(lambda p: p.kind in positional, signature.parameters.values())
        )
        traced = self._traced
        nargs = len(jax.tree_util.treedef_children(traced.in_tree)) + len(traced.static_args)
        return signature, params, nargs

    def __repr__(self) -> str:
        return f"<superopt.Optimized {self._report.summary}>"


_UNSET = object()


def _accepts(name: str, params: list[inspect.Parameter], nargs: int) -> str:
    """What an optimized function takes, for the end of a `SignatureError`."""
    named = [p.name for p in params[:nargs] if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    how = f"by position or by name ({', '.join(named)})" if named else "by position only"
    return (f"the optimized {name} takes the {nargs} argument(s) of the example call, {how}; "
            "use @superopt.jit for other keyword arguments")  # fmt: skip


def optimize(
    fn: Callable[..., Any],
    *example_args: Any,
    cost_model: Any = "learned",
    budget: int = 0,
    rules: Sequence[Any] | None = None,
    node_limit: int = 50_000,
    time_limit: float = 5.0,
    cache: bool = True,
    cache_dir: str | None = None,
    static_argnums: int | Sequence[int] = (),
    verify: bool = True,
) -> Optimized:
    """Optimize `fn` for arguments shaped like `example_args`.

    The search proposes equivalent candidates ranked by `cost_model`; the first that
    compiles and verifies wins (`budget=0`), or, with a budget, the fastest of up to
    `budget` verified candidates timed side by side with `jax.jit(fn)` on this machine,
    provided it is not slower than `jax.jit(fn)`.

    With the tuning cache on, the winner is stored and a later call with the same program,
    options, library versions and cost-model weights rebuilds it without searching (tens
    of milliseconds for a small program; `report.cached` is then `True`). Such a hit does
    not verify again: the stored program was verified when it was stored, and the cache
    key covers its structure, constants and the library versions, so the rebuilt program
    is the one that passed. Timings are stored per candidate and reused too: a candidate once timed
    on this machine is not timed again, even under other options.

    **Arguments:**

    - `fn`: the function, plain or already wrapped in `jax.jit`.
    - `*example_args`: example arguments (arrays, numbers, pytrees of them). The result
      accepts arguments of exactly these shapes and dtypes; verification also runs on
      these values. Other leaves (an Equinox model's activation) are static, as under
      `eqx.filter_jit`: the result takes only the same ones (equal, or the same object).
      They are positional: the result takes each by position or by its parameter's name,
      and other keyword arguments not at all (`optimize`'s own keywords are its options).
      To optimize for a keyword argument, bind it in a wrapper (`lambda x, w: fn(x, w=w)`)
      or use `@superopt.jit`, which takes them as `jax.jit` does.
    - `cost_model`: `"learned"`, `"analytical"` or a cost model object; ranks candidates.
    - `budget`: how many candidates may be timed on the hardware. `0` trusts the cost
      model and times nothing. `N > 0` verifies and times at most `N` candidates (the
      model's best, then the best of each other distinct rewrite or tile-size choice)
      in one interleaved run against `jax.jit(fn)`; the fastest wins if it is not
      slower than `jax.jit(fn)`, else the original function is kept and the report says
      why. `report.measurements` lists every timed candidate.
    - `rules`: the rule sets to search with (`None` for the default ones).
    - `node_limit`: the e-graph size at which the search stops growing it.
    - `time_limit`: seconds the search may run.
    - `cache`: read and write the tuning cache.
    - `cache_dir`: the cache folder (default `SUPEROPT_CACHE_DIR` or the user's cache).
    - `static_argnums`: positions of arguments that are Python values, not arrays. When
      `fn` is a `jax.jit` function, the arguments it holds static are static here too.
    - `verify`: check the winner against `fn` before returning it (keep this on).

    **Returns:** an `Optimized` callable; `.report` says what happened.

    **Raises:** `TraceError` if `fn` is not callable or cannot be traced with the example
    arguments, or `static_argnums` is out of range; `CacheError` if the tuning cache is
    unreadable; `ValueError` if `budget` is not a whole number of candidates, or
    `cost_model` or `rules` names an unknown model or rule; `TypeError` if `cost_model`
    is not one.
    """
    if not callable(fn):
        raise TraceError(_NOT_CALLABLE_MSG.format(kind=type(fn).__name__, value=fn))
    budget = _check_budget(budget)
    check_cost_model(cost_model)
    try:
        select_rules(rules)
    except SearchError as err:  # a misspelt rule name is bad input, not a failed search
        raise ValueError(str(err)) from err
    static_argnums = static_positions(static_argnums, len(example_args), fn)
    name = _function_name(fn)
    phases: dict[str, float] = {}
    env = _environment(cost_model)

    start = time.perf_counter()
    try:
        traced = trace(fn, *example_args, static_argnums=static_argnums)
    except TraceError as err:
        if not _jax_can_trace(fn, example_args, static_argnums):
            raise
        reference_call = _verify.jit_static(fn, example_args, static_argnums)
        # JAX runs it but the IR cannot carry it: hand back the original, untouched.
        signature = _signature_of(example_args, static_argnums)
        report = Report(
            function=name,
            status="fallback",
            reason=f"superopt cannot represent this program ({err}); the original "
            "function is returned unchanged",
            phase_s={"trace": time.perf_counter() - start},
            **env,
        )
        return Optimized(fn, signature, None, reference_call, report, _original_source(name))
    phases["trace"] = time.perf_counter() - start
    reference_call = _verify.jit_static(fn, example_args, static_argnums, traced.hold_numbers,
                                        static_outputs=bool(traced.static_outputs))  # fmt: skip
    ref_key = traced.program.canonical_key()
    program_key = _tune.stable_key(traced.program)
    ops_before = traced.program.count_ops()
    if traced.effects:
        report = Report(
            function=name,
            status="unchanged",
            reason=_sentences([traced.note, _EFFECTS_MSG.format(names=", ".join(traced.effects))]),
            ops_before=ops_before,
            ops_after=ops_before,
            phase_s=phases,
            **env,
        )
        return Optimized(fn, traced, None, reference_call, report, _original_source(name))

    options = {
        "cost_model": env["cost_model"],
        "rules": None if rules is None else [_rule_name(r) for r in rules],
        "node_limit": node_limit,
        "time_limit": time_limit,
        "budget": budget,
        "verify": verify,
        "weights": _weights_id(cost_model),
        "min_predicted_gain": MIN_PREDICTED_GAIN if budget == 0 else None,
    }
    record = None
    if cache:
        start = time.perf_counter()
        digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
        with _open_cache(cache_dir) as store:
            record = store.record_key(f"{program_key}:{digest}")
            cached = store.get_result(record)
        hit = _rebuild(cached, fn, reference_call, traced, ref_key, name, phases, start)
        if hit is not None:
            return hit

    start = time.perf_counter()
    failures: list[str] = []
    try:
        result = search(
            traced.program,
            cost_model=cost_model,
            rules=rules,
            node_limit=node_limit,
            time_limit=time_limit,
            **({"top_k": budget} if budget > 8 else {}),
        )
    except Exception as err:
        failures.append(f"the search failed ({type(err).__name__}: {err})")
        result = SearchResult((Candidate(traced.program),), note="")
    phases["search"] = time.perf_counter() - start
    candidates = list(result.candidates)
    if not any(c.program.canonical_key() == ref_key for c in candidates):
        # The round-tripped reference is the safe last resort whatever the search says.
        candidates.append(Candidate(traced.program))

    build = functools.partial(
        _build, fn, example_args, traced, name, static_argnums, verify, failures, phases
    )
    timings: dict[str, Any] = {}
    measured: list[_tune.Measured] = []
    kept_reference = ""
    if budget > 0:
        winner, timings, measured, kept_reference = _autotune(
            fn, example_args, traced, candidates, ref_key, program_key, budget,
            build, phases, cache_dir if cache else False,
        )  # fmt: skip
    else:
        pool, untrusted = trusted(candidates)
        winner = next((w for w in map(build, pool) if w is not None), None)
        if untrusted:  # said only if the original is what comes back
            kept_reference = f"{result.note}; {untrusted}" if result.note else untrusted

    common = dict(
        function=name,
        ops_before=ops_before,
        search_stats=dict(result.stats),
        candidates_tried=len(candidates),
        phase_s=phases,
        measurements=tuple(m.to_dict() for m in measured),
        **env,
    )
    if winner is None:
        failures.append("no candidate passed, so the original function is returned")
        report = Report(status="fallback", reason=_sentences([traced.note, *failures]),
                        ops_after=ops_before, **common)  # fmt: skip
        return Optimized(fn, traced, None, reference_call, report, _original_source(name))

    cand, flat_call, source, verdict = winner
    rewritten = cand.program.canonical_key() != ref_key
    if rewritten:
        status, reason = "optimized", _sentences([*failures, result.note])
    elif failures:
        status = "fallback"
        reason = _sentences([*failures, kept_reference or "the original function is returned"])
    else:
        status = "unchanged"
        reason = _sentences(
            [kept_reference or result.note or "no candidate better than the traced program "
             "was found, so the original function is returned"]
        )  # fmt: skip
    report = Report(
        status=status,
        reason=_sentences([traced.note, reason]),
        verified=verify,
        verdict=verdict_dict(verdict),
        predicted_s=cand.predicted_s,
        ops_after=cand.program.count_ops(),
        candidate=cand.label,
        rewrites=tuple(cand.rewrites),
        **common,
        **timings,
    )
    if record is not None:
        _store(cache_dir, record, cand.program, traced.program, report)
    if not rewritten:
        # Nothing better than the traced program: hand back the original function itself.
        # The round trip computes the same values, but not always the same derivatives: it
        # inlines JAX's own `jax.custom_jvp` rules (relu's gradient at 0 becomes 0.5).
        return Optimized(fn, traced, None, reference_call, report, _original_source(name))
    return Optimized(fn, traced, cand.program, flat_call, report, source)


_EFFECTS_MSG = (
    "the function has side effects ({names}), which a rewritten program would drop, so the "
    "original function is returned; optimize the pure part of it instead"
)

_BUDGET_MSG = (
    "budget is the number of candidates to time on this machine, a whole number >= 0 "
    "(0 trusts the cost model and times nothing); got {value!r}. For example "
    "`superopt.optimize(f, x, budget=4)` times the model's best four distinct candidates."
)

_Winner = tuple[Candidate, Callable[..., Any], str, Any]


def _check_budget(budget: Any) -> int:
    ok = isinstance(budget, (int, np.integer)) and not isinstance(budget, bool)
    if isinstance(budget, float) and budget.is_integer():
        ok = True
    if not ok or budget < 0:
        raise ValueError(_BUDGET_MSG.format(value=budget))
    return int(budget)


def _build(
    fn: Callable[..., Any],
    example_args: tuple[Any, ...],
    traced: Traced,
    name: str,
    static_argnums: tuple[int, ...],
    verify: bool,
    failures: list[str],
    phases: dict[str, float],
    cand: Candidate,
) -> _Winner | None:
    """Codegen and (if on) verify one candidate; `None`, with the reason noted, if it fails."""
    phases.setdefault("codegen", 0.0)
    phases.setdefault("verify", 0.0)
    start = time.perf_counter()
    try:
        source = render(cand.program, _identifier(name))
        flat = to_callable(cand.program, _identifier(name))
        call = _pytree_call(flat, traced, name, cand.label)
    except Exception as err:
        failures.append(f"codegen of candidate {cand.label!r} failed "
                        f"({type(err).__name__}: {err})")  # fmt: skip
        return None
    finally:
        phases["codegen"] += time.perf_counter() - start
    verdict = None
    if verify:
        start = time.perf_counter()
        try:
            verdict = _verify.verify(
                fn,
                call,
                *example_args,
                static_argnums=static_argnums,
                time_budget_s=VERIFY_BUDGET_S,
                hold_numbers=traced.hold_numbers,
            )
        except Exception as err:
            failures.append(f"verifying candidate {cand.label!r} raised "
                            f"{type(err).__name__}: {err}")  # fmt: skip
            return None
        finally:
            phases["verify"] += time.perf_counter() - start
        if not verdict.ok:
            failures.append(f"candidate {cand.label!r} failed verification: "
                            f"{verdict.message}")  # fmt: skip
            return None
    return cand, call, source, verdict


def _autotune(
    fn: Callable[..., Any],
    example_args: tuple[Any, ...],
    traced: Traced,
    candidates: list[Candidate],
    ref_key: str,
    program_key: str,
    budget: int,
    build: Callable[[Candidate], _Winner | None],
    phases: dict[str, float],
    cache_dir: str | bool | None,
) -> tuple[_Winner | None, dict[str, Any], list[_tune.Measured], str]:
    """Time up to `budget` verified candidates; the fastest not slower than `jax.jit` wins.

    `cache_dir` is `False` without the cache (no reuse, nothing stored). Returns the
    winner (or the traced program's build), its timings, every measurement, and why the
    original function was kept ("" if a candidate won).
    """
    rewritten = [c for c in candidates if c.program.canonical_key() != ref_key]
    ready: list[tuple[_Winner, str]] = []
    for cand in _tune.measurement_order(rewritten):
        if len(ready) >= budget:
            break
        built = build(cand)
        if built is not None:
            ready.append((built, _tune.stable_key(cand.program)))
    measured: list[_tune.Measured] = []
    if ready:
        start = time.perf_counter()
        entries = [(w[0], key, w[1]) for w, key in ready]
        store_cm = _open_cache(cache_dir) if cache_dir is not False else contextlib.nullcontext()
        with store_cm as store:
            measured = _tune.measure(fn, entries, example_args, traced.static_argnums,
                                     program_key=program_key, store=store,
                                     hold_numbers=traced.hold_numbers)  # fmt: skip
        phases["measure"] = time.perf_counter() - start
    best = _tune.fastest(measured)
    if best is not None:
        winner = next(w for w, key in ready if key == best.key)
        timings = {"speedup": best.speedup, "measured_s": best.measured_s,
                   "reference_s": best.reference_s}  # fmt: skip
        return winner, timings, measured, ""
    why = ""
    timings = {}
    if measured:
        listed = ", ".join(f"{m.label} {m.speedup:.2f}x" for m in measured)
        why = (f"none of the {len(measured)} timed candidate(s) was faster than jax.jit "
               f"({listed}), so the original function is kept")  # fmt: skip
        timings = {"reference_s": measured[0].reference_s}
    reference = [c for c in candidates if c.program.canonical_key() == ref_key]
    winner = next((w for w in map(build, reference) if w is not None), None)
    return winner, timings, measured, why


def _rebuild(
    cached: dict[str, Any] | None,
    fn: Callable[..., Any],
    reference_call: Callable[..., Any],
    traced: Traced,
    ref_key: str,
    name: str,
    phases: dict[str, float],
    start: float,
) -> Optimized | None:
    """The stored winner rebuilt against the new trace (whose canonical key is `ref_key`),
    or `None` (a cache miss)."""
    if not cached:
        return None
    program = _tune.load_program(cached.get("program"), traced.program)
    if program is None:
        return None
    unchanged = program.canonical_key() == ref_key
    try:
        report = Report.from_dict(cached["report"])
        if not unchanged:
            source = render(program, _identifier(name))
            flat = to_callable(program, _identifier(name))
    except Exception:
        return None  # a stale or damaged entry costs a search, never a wrong answer
    phases["cache"] = time.perf_counter() - start
    report = report.replace(function=name, cached=True, phase_s=dict(phases))
    if unchanged:
        # Stored "nothing better": the original function, as `optimize` returns it.
        return Optimized(fn, traced, None, reference_call, report, _original_source(name))
    call = _pytree_call(flat, traced, name, report.candidate)
    return Optimized(fn, traced, program, call, report, source)


def _store(
    cache_dir: str | None, record: str, program: Program, reference: Program, report: Report
) -> None:
    try:
        stored = _tune.dump_program(program, reference)
    except Exception:
        return  # not storable (a parameter with no plain form): the next call searches
    with _open_cache(cache_dir) as store:
        store.put_result(record, {"program": stored, "report": report.to_dict()})


def _pytree_call(
    flat: Callable[..., tuple[Any, ...]], traced: Traced, name: str, label: str
) -> Callable[..., Any]:
    """The flat codegen'd function, jitted, behind the original's pytree signature."""
    jitted = jax.jit(flat)

    def call(*args: Any) -> Any:
        leaves = traced.flatten_args(args)
        return traced.unflatten_outputs(jitted(*leaves))

    call.__name__ = call.__qualname__ = f"{name}[{label}]"
    return traced.jit_checked(call)


def _jax_can_trace(fn: Callable[..., Any], args: tuple[Any, ...], static: tuple[int, ...]) -> bool:
    """Whether JAX itself can trace `fn(*args)` (so a failure is superopt's, not the input's),
    with the static arguments and the leaves that are not arrays closed over."""
    bound, arrays = close_over_static(fn, args, static)
    try:
        jax.eval_shape(bound, *arrays)
    except Exception:
        return False
    return True


def _signature_of(args: tuple[Any, ...], static_argnums: tuple[int, ...]) -> Traced:
    """A `Traced` that only knows the argument signature (for the original-function path)."""
    static, in_tree, arrays, static_leaves = split_arguments(args, static_argnums)
    specs = tuple(ArgSpec.of(leaf) for leaf in arrays)
    return Traced(Program((), ()), in_tree, None, specs, static_argnums, static, static_leaves)


def _open_cache(cache_dir: str | None) -> Any:
    """The tuning cache in `cache_dir` (or the default folder); close it after use."""
    path = None if cache_dir is None else Path(cache_dir).expanduser() / _cache.FILENAME
    try:
        return _cache.TuningCache(path)
    except CacheError:
        raise
    except Exception as err:
        where = cache_dir or "the default cache folder"
        raise CacheError(
            f"cannot open the tuning cache in {where}: {err}. Pass cache=False to skip it, "
            "or point SUPEROPT_CACHE_DIR at a writable folder"
        ) from err


def _environment(cost_model: Any) -> dict[str, str]:
    devices = jax.devices()
    if cost_model is None:
        model_name = "default"
    elif cost_model in ("learned", "analytical"):
        from ._predict import resolve_model

        # Missing or foreign weights make the search fall back to the analytical model (a
        # corrupt fit of it, to the unfitted roofline); the report must say which model
        # ranked the candidates, and why.
        _, name, note = resolve_model(cost_model, fallback=True)
        model_name = name if not note else f"{name} ({note})"
    elif isinstance(cost_model, str):
        model_name = cost_model
    else:
        model_name = getattr(cost_model, "name", None) or type(cost_model).__name__
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind if devices else "",
        "cost_model": str(model_name),
    }


def _weights_id(cost_model: Any) -> str | None:
    """The fingerprint of the weights a named model reads (`None` for other models): part
    of the tuning-cache key, so that retrained weights search again."""
    from ._predict import NAMED_MODELS, default_weights, weights_fingerprint

    if not (isinstance(cost_model, str) and cost_model in NAMED_MODELS):
        return None

    return weights_fingerprint(default_weights())


def _function_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None and isinstance(fn, functools.partial):
        return _function_name(fn.func)
    return str(name or type(fn).__name__)


def _identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name.rsplit(".", 1)[-1]).strip("_") or "optimized"
    if ident[0].isdigit():
        ident = f"f_{ident}"
    return f"{ident}_" if keyword.iskeyword(ident) else ident


def _rule_name(rule: Any) -> str:
    return str(getattr(rule, "name", None) or getattr(rule, "__name__", None) or rule)


def _sentences(parts: Sequence[str]) -> str:
    """Reasons joined into one text, each ending with one full stop."""
    texts = [p.strip().rstrip(".") for p in parts if p and p.strip()]
    return " ".join(t[0].upper() + t[1:] + "." for t in texts)


def _original_source(name: str) -> str:
    return f"# superopt returned the original function {name} unchanged (see the report)\n"
