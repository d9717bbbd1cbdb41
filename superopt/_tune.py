"""Budgeted autotuning and the stored winners behind a fast second `optimize`.

Two jobs share this module because both live off the tuning cache:

- **The autotuner.** With `optimize(..., budget=N)` the cost model proposes and the
  hardware decides: at most `N` candidates (the model's best, then the best of each
  other distinct rewrite choice, then the rest in the model's order) are verified and
  timed side by side with `jax.jit(fn)` in one interleaved run. A candidate's timing is
  stored in the tuning cache together with the `jax.jit` timing of the same run, so a
  later call compares like with like and never times that candidate again on this
  machine.
- **Stored winners.** The winning `Program` is written as JSON — a node list with ops,
  parameters and operand positions — so that a cache hit rebuilds it without searching.
  Parameters that are not plain data (an opaque equation with its jaxpr, a gather spec, a
  PRNG key dtype) are stored as the position of a node of the reference program that has
  the same value: the reference is traced again on every call (milliseconds), and tracing
  is deterministic, so the position finds the same value in the new trace. A rebuilt
  program whose key differs from the stored one is a cache miss, never a wrong program.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _measure
from ._leaves import close_over_static
from ._search import Candidate
from .ir import Node, Params, Program
from .ir._node import param_text

FORMAT_VERSION = 1

# Labels of stored timings: a candidate's own, and `jax.jit`'s in the same timed run.
_CANDIDATE_LABEL = "candidate:{key}"
_REFERENCE_LABEL = "jax.jit:{key}"


# ---------------------------------------------------------------- keys

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stable_key(program: Program) -> str:
    """A hash of `program` that is the same every time the same function is traced.

    `Program.canonical_key` names an opaque equation by a counter that grows with every
    trace, so two traces of one function never share it. Here an opaque equation is named
    by its primitive, its position among the program's opaque equations and the text of
    its parameters instead, without memory addresses (a `custom_vjp_call` holds a fresh
    closure on every trace).

    **Arguments:**

    - `program`: the IR program.

    **Returns:** a 32-character hex digest.
    """
    h = hashlib.sha256()
    index: dict[int, int] = {}
    opaque: dict[int, str] = {}
    for i, node in enumerate(program.nodes()):
        index[id(node)] = i
        args = ",".join(str(index[id(a)]) for a in node.args)
        dt = "tuple" if node.dtype is None else str(node.dtype)
        if node.op == "opaque":
            eqn = node.params["eqn"]
            if id(eqn) not in opaque:
                text = _ADDRESS.sub("", repr(sorted(eqn.params.items())))
                body = hashlib.sha256(text.encode()).hexdigest()
                opaque[id(eqn)] = f"opaque{len(opaque)}:{eqn.primitive.name}:{body[:16]}"
            params = f"{opaque[id(eqn)]};out_types={param_text(node.params['out_types'])}"
        else:
            params = node.params.key
        h.update(f"{node.op}({args})[{params}]:{dt}{node.shape}\n".encode())
    h.update(("out:" + ",".join(str(index[id(o)]) for o in program.outputs)).encode())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------- stored programs


class _NotPlain(Exception):
    """A parameter value that JSON cannot carry exactly."""


def _encode(value: Any) -> Any:
    # Exact types only: a numpy scalar or a subclass would come back as something else.
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, np.dtype) and type(value).__module__.startswith("numpy"):
        try:
            if np.dtype(value.name) == value:
                return {"$dtype": value.name}
        except TypeError:
            pass
        raise _NotPlain
    if type(value) is tuple:
        return {"$tuple": [_encode(v) for v in value]}
    if type(value) is list:
        return {"$list": [_encode(v) for v in value]}
    raise _NotPlain


def _decode(value: Any, refs: Callable[[int, str], Any]) -> Any:
    if not isinstance(value, dict):
        return value
    if "$tuple" in value:
        return tuple(_decode(v, refs) for v in value["$tuple"])
    if "$list" in value:
        return [_decode(v, refs) for v in value["$list"]]
    if "$dtype" in value:
        return np.dtype(value["$dtype"])
    if "$float" in value:
        return float(value["$float"])
    if "$ref" in value:
        node_index, name = value["$ref"]
        return refs(int(node_index), str(name))
    raise ValueError(f"unknown stored value {value!r}")


def _value_text(value: Any) -> str:
    return param_text(value) + f"|{type(value).__name__}"


def dump_program(program: Program, reference: Program) -> dict[str, Any]:
    """`program` as JSON-compatible data that `load_program` rebuilds against a new trace.

    **Arguments:**

    - `program`: the program to store (a candidate of `reference`).
    - `reference`: the traced program `program` was derived from; its inputs and
      constants are shared, and values JSON cannot carry are stored as positions in it.

    **Returns:** a dict with the node list, the outputs and the program's stable key.

    **Raises:** `ValueError` if a value has no plain form and no equal in `reference`.
    """
    ref_nodes = reference.nodes()
    lookup: dict[str, tuple[int, str]] = {}
    for i, node in enumerate(ref_nodes):
        for name, value in node.params.items():
            lookup.setdefault(f"{name}={_value_text(value)}", (i, name))
        lookup.setdefault(f"@dtype={_value_text(node.dtype)}", (i, "@dtype"))

    def encode(name: str, value: Any) -> Any:
        try:
            return _encode(value)
        except _NotPlain:
            found = lookup.get(f"{name}={_value_text(value)}")
            if found is None:
                raise ValueError(
                    f"the {name!r} value {value!r} has no plain form and no equal in the "
                    "reference program, so the program cannot be stored"
                ) from None
            return {"$ref": list(found)}

    index: dict[int, int] = {}
    rows = []
    for i, node in enumerate(program.nodes()):
        index[id(node)] = i
        params = {name: encode(name, value) for name, value in node.params.items()}
        rows.append(
            [
                node.op,
                [index[id(a)] for a in node.args],
                params,
                list(node.shape),
                encode("@dtype", node.dtype),
            ]
        )
    return {
        "format": FORMAT_VERSION,
        "nodes": rows,
        "outputs": [index[id(o)] for o in program.outputs],
        "key": stable_key(program),
    }


def load_program(data: Any, reference: Program) -> Program | None:
    """Rebuild a program stored by `dump_program`, or `None` if it does not fit.

    **Arguments:**

    - `data`: what `dump_program` returned (read back from JSON).
    - `reference`: the program traced now from the same function and signature.

    **Returns:** the program, or `None` when the data is malformed, refers to something
    the new trace lacks, or rebuilds to a program with another key (a cache miss).
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        return None
    ref_nodes = reference.nodes()

    def refs(node_index: int, name: str) -> Any:
        node = ref_nodes[node_index]
        return node.dtype if name == "@dtype" else node.params[name]

    try:
        built: list[Node] = []
        for op, args, params, shape, dtype in data["nodes"]:
            decoded = {name: _decode(v, refs) for name, v in params.items()}
            if op == "input":
                node = reference.inputs[decoded["index"]]
            elif op == "const" and decoded["key"] not in reference.consts:
                return None
            else:
                node = Node(
                    op,
                    tuple(built[a] for a in args),
                    Params(decoded),
                    tuple(shape),
                    _decode(dtype, refs),
                )
            built.append(node)
        program = Program(
            reference.inputs, tuple(built[o] for o in data["outputs"]), reference.consts
        )
        same = stable_key(program) == data.get("key")
    except Exception:
        # Whatever is wrong with a stored entry, it costs a search, never a wrong program.
        return None
    return program if same else None


# ---------------------------------------------------------------- choosing what to time


def rewrite_choice(candidate: Candidate) -> tuple[str, ...]:
    """The distinct rewrite rules (tile sizes included) that made `candidate`."""
    return tuple(sorted({step.rule for step in candidate.rewrites}))


def measurement_order(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates in the order the autotuner times them: diversity first.

    The model's best of each distinct rewrite choice (`rewrite_choice`) comes first, in
    the model's order, then every other candidate in the model's order. So a budget of
    two times the model's favourite and its best alternative that differs in a rewrite
    or a tile size, not two association orders of the same idea.

    **Arguments:**

    - `candidates`: the search's candidates, best predicted first.

    **Returns:** the same candidates, reordered.
    """
    seen: set[tuple[str, ...]] = set()
    first, rest = [], []
    for cand in candidates:
        choice = rewrite_choice(cand)
        (rest if choice in seen else first).append(cand)
        seen.add(choice)
    return first + rest


# ---------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measured:
    """One candidate's measured runtime against `jax.jit` of the original.

    **Arguments:**

    - `label`: the candidate's label.
    - `key`: the candidate program's stable key.
    - `rules`: its rewrite choice (`rewrite_choice`).
    - `predicted_s`: the cost model's prediction, if any.
    - `measured_s`: the candidate's median seconds.
    - `reference_s`: `jax.jit(fn)`'s median seconds in the same timed run.
    - `spread`: the candidate's relative spread (`superopt.Timing.spread`).
    - `reused`: whether the timing came from the tuning cache instead of a run now.
    """

    label: str
    key: str
    rules: tuple[str, ...]
    predicted_s: float | None
    measured_s: float
    reference_s: float
    spread: float
    reused: bool

    @property
    def speedup(self) -> float:
        """`reference_s / measured_s` (> 1: faster than `jax.jit`)."""
        return self.reference_s / self.measured_s if self.measured_s > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible data, `speedup` included (what the report stores)."""
        return {
            "label": self.label,
            "key": self.key,
            "rules": list(self.rules),
            "predicted_s": self.predicted_s,
            "measured_s": self.measured_s,
            "reference_s": self.reference_s,
            "speedup": self.speedup,
            "spread": self.spread,
            "reused": self.reused,
        }


def stored_timing(store: Any, program_key: str, candidate_key: str) -> tuple[Any, Any] | None:
    """The newest stored (candidate, `jax.jit`) timing pair of a candidate, if any."""
    if store is None:
        return None
    cand_label = _CANDIDATE_LABEL.format(key=candidate_key)
    ref_label = _REFERENCE_LABEL.format(key=candidate_key)
    cand = ref = None
    for m in store.measurements(program_key):
        if m.variant_label == cand_label:
            cand = m
        elif m.variant_label == ref_label:
            ref = m
    return (cand, ref) if cand is not None and ref is not None else None


def measure(
    reference: Callable[..., Any],
    entries: Sequence[tuple[Candidate, str, Callable[..., Any]]],
    args: tuple[Any, ...],
    static_argnums: tuple[int, ...],
    *,
    program_key: str,
    store: Any = None,
    budget_s: float | None = None,
    hold_numbers: bool = False,
) -> list[Measured]:
    """Time candidates against `jax.jit(reference)`, reusing and storing timings.

    Candidates with a stored timing on this machine (`store`, a `TuningCache`) are not
    timed again; all others are timed in one interleaved run together with the
    reference, and each is stored with the reference's timing of that run.

    **Arguments:**

    - `reference`: the original function.
    - `entries`: `(candidate, stable key, callable)` for each candidate to time; the
      callable takes the original's arguments.
    - `args`: the example arguments (static ones included).
    - `static_argnums`: positions of the static arguments.
    - `hold_numbers`: whether the Python numbers among the others are held static.
    - `program_key`: the reference program's stable key (what timings are stored under).
    - `store`: an open `TuningCache`, or `None` to neither reuse nor store.
    - `budget_s`: seconds of timed rounds (default: a little per candidate).

    **Returns:** a `Measured` per entry, in the order of `entries`.
    """
    results: dict[str, Measured] = {}
    fresh = []
    for cand, key, call in entries:
        pair = stored_timing(store, program_key, key)
        if pair is None:
            fresh.append((cand, key, call))
            continue
        timing, ref = pair
        results[key] = Measured(
            cand.label, key, rewrite_choice(cand), cand.predicted_s,
            timing.median_s, ref.median_s, timing.spread, True,
        )  # fmt: skip
    if fresh:
        # The timer jits what it is given, so static arguments and the leaves that are not
        # arrays (an Equinox model's functions) are closed over, not passed.
        timed_reference, arrays = close_over_static(reference, args, static_argnums, hold_numbers)
        fns = {"jax.jit": timed_reference}
        for _, key, call in fresh:
            fns[key] = close_over_static(call, args, static_argnums, hold_numbers)[0]
        timings = _measure.time_callables(
            fns,
            tuple(arrays),
            warmup=1,
            min_rounds=5,
            max_rounds=200,
            budget_s=budget_s if budget_s is not None else 0.1 + 0.1 * len(fresh),
        )
        ref = timings["jax.jit"]
        for cand, key, _ in fresh:
            t = timings[key]
            results[key] = Measured(
                cand.label, key, rewrite_choice(cand), cand.predicted_s,
                t.median_s, ref.median_s, t.spread, False,
            )  # fmt: skip
            if store is not None:
                store.put_measurement(program_key, _CANDIDATE_LABEL.format(key=key), t.median_s,
                                      spread=t.spread, n=t.n)  # fmt: skip
                store.put_measurement(program_key, _REFERENCE_LABEL.format(key=key),
                                      ref.median_s, spread=ref.spread, n=ref.n)  # fmt: skip
    return [results[key] for _, key, _ in entries]


def fastest(measured: Sequence[Measured]) -> Measured | None:
    """The fastest measured candidate that is not slower than `jax.jit`, or `None`."""
    keep = [m for m in measured if m.speedup >= 1.0]
    return max(keep, key=lambda m: m.speedup) if keep else None
