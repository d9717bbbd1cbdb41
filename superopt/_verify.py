"""Verification: does a candidate compute what the reference computes?

Both callables run on the default backend, on the user's own inputs and on a few random
inputs of the same shapes and dtypes. Every output leaf is compared with a tolerance chosen
by its dtype; where NaNs and infinities fall is part of the answer. Nothing is returned to a
user that fails this check.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from ._errors import VerificationError
from ._leaves import (
    describe,
    filter_jit,
    has_static_leaves,
    is_array_leaf,
    is_python_number,
    same_static,
)

# Default (rtol, floor) per float precision, keyed by the dtype's machine epsilon. The error
# of one element is |a - b| / (|b| + atol) and must not exceed rtol; atol defaults to
# `floor * max|reference leaf|`, so elements that cancel to nearly zero are judged against
# the size of the whole output rather than against themselves. The floors leave room for
# reassociated sums (a matmul chain regrouped, a reduction tiled), whose rounding error
# grows with the contraction length relative to the largest output, not to each element.
_FLOAT_TOLERANCES: tuple[tuple[float, float, float], ...] = (
    # (largest eps, rtol, floor)
    (1e-15, 1e-9, 1e-2),  # float64, complex128
    (1e-6, 1e-4, 1e-1),  # float32, complex64
    (1e-2, 2e-2, 2.5e-1),  # float16, bfloat16
    (math.inf, 2.5e-1, 5e-1),  # 8-bit and smaller floats
)

_STRUCTURE_MSG = (
    "the candidate returns a different output structure from the reference:\n"
    "  reference: {ref}\n  candidate: {cand}\n"
    "A candidate must return the same pytree of arrays as the function it replaces."
)


@dataclass(frozen=True)
class Check:
    """The outcome of comparing the outputs on one set of inputs.

    **Arguments:**

    - `inputs`: which inputs were used: `"user inputs"` or `"random inputs #k"`.
    - `ok`: whether every output leaf matched.
    - `max_rel_error`: the largest robust relative error over all float leaves
        (`inf` where NaN/Inf positions or integer values differ).
    - `where`: the output leaf and index of the worst element, or `""`.
    - `message`: a sentence describing the worst mismatch, or `""`.
    """

    inputs: str
    ok: bool
    max_rel_error: float
    where: str
    message: str


@dataclass(frozen=True)
class Verdict:
    """The answer of [`superopt.verify`][]: whether a candidate matches a reference.

    **Arguments:**

    - `ok`: true when every output matched on every input set.
    - `max_rel_error`: the largest robust relative error `|a - b| / (|b| + atol)` seen
        (`inf` for a structural, NaN-position or integer mismatch, or an exception).
    - `where`: the input set, output leaf (pytree path) and index of the worst element,
        e.g. `"random inputs #2, output[1]['loss'], index (3, 4)"`.
    - `message`: a readable explanation; says what failed when `ok` is false.
    - `checks`: one [`superopt.Check`][] per input set that was compared.

    `bool(verdict)` is `verdict.ok`.
    """

    ok: bool
    max_rel_error: float
    where: str
    message: str
    checks: tuple[Check, ...] = ()

    def __bool__(self) -> bool:
        return self.ok

    def raise_if_failed(self) -> None:
        """Raise `VerificationError` carrying the message when the verdict failed."""
        if not self.ok:
            raise VerificationError(self.message)


@dataclass(frozen=True)
class _LeafResult:
    ok: bool
    error: float
    index: tuple[int, ...] | None
    detail: str


def default_tolerance(dtype: Any) -> tuple[float, float]:
    """The default `(rtol, floor)` for a float dtype (see the module notes).

    **Arguments:**

    - `dtype`: an inexact numpy or JAX dtype.

    **Returns:**

    `rtol`, and the fraction of the reference leaf's largest magnitude used as `atol`.
    """
    eps = float(jax.numpy.finfo(dtype).eps)
    for largest_eps, rtol, floor in _FLOAT_TOLERANCES:
        if eps <= largest_eps:
            return rtol, floor
    raise AssertionError("unreachable: the last tolerance row accepts every epsilon")


def _compare_leaf(
    ref: np.ndarray, cand: np.ndarray, rtol: float | None, atol: float | None
) -> _LeafResult:
    if ref.shape != cand.shape or ref.dtype != cand.dtype:
        return _LeafResult(
            False,
            math.inf,
            None,
            f"is {cand.dtype.name}{list(cand.shape)} in the candidate but "
            f"{ref.dtype.name}{list(ref.shape)} in the reference",
        )
    if ref.size == 0:
        return _LeafResult(True, 0.0, None, "")
    if not jax.numpy.issubdtype(ref.dtype, jax.numpy.inexact):
        # Integers and booleans are exact: an index off by one is a different program.
        r, c = ref.astype(np.int64), cand.astype(np.int64)
        diff = np.abs(c - r)
        if not diff.any():
            return _LeafResult(True, 0.0, None, "")
        index = np.unravel_index(int(np.argmax(diff)), ref.shape)
        return _LeafResult(
            False,
            math.inf,
            tuple(int(i) for i in index),
            f"holds {c[index]} in the candidate but {r[index]} in the reference "
            f"({int(np.count_nonzero(diff))} of {ref.size} elements differ; "
            f"{ref.dtype.name} outputs must match exactly)",
        )
    default_rtol, floor = default_tolerance(ref.dtype)
    rtol = default_rtol if rtol is None else rtol
    wide = np.complex128 if np.iscomplexobj(ref) else np.float64
    r, c = ref.astype(wide), cand.astype(wide)
    r_finite, c_finite = np.isfinite(r), np.isfinite(c)
    if atol is None:
        scale = float(np.max(np.abs(r[r_finite]), initial=0.0))
        atol = max(floor * scale, float(jax.numpy.finfo(ref.dtype).tiny))
    both = r_finite & c_finite
    err = np.zeros(r.shape, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        err[both] = np.abs(c[both] - r[both]) / (np.abs(r[both]) + atol)
        # Non-finite values must sit in the same places: NaN with NaN, +inf with +inf.
        same_special = (np.isnan(r) & np.isnan(c)) | (~r_finite & ~np.isnan(r) & (r == c))
    err[~both & ~same_special] = math.inf
    index = np.unravel_index(int(np.argmax(err)), r.shape)
    worst = float(err[index])
    if worst <= rtol:
        return _LeafResult(True, worst, tuple(int(i) for i in index), "")
    return _LeafResult(
        False,
        worst,
        tuple(int(i) for i in index),
        f"holds {_fmt(cand[index])} in the candidate but {_fmt(ref[index])} in the reference "
        f"(relative error {worst:.3g} > rtol {rtol:.3g}, atol {atol:.3g})",
    )


def _compare_static(ref: Any, cand: Any) -> _LeafResult:
    """A static output (a function, a string: not an array or a number) must be the same
    object, or equal (`same_static`)."""
    if same_static(ref, cand):
        return _LeafResult(True, 0.0, None, "")
    return _LeafResult(
        False,
        math.inf,
        None,
        f"is {describe(cand)} in the candidate but {describe(ref)} in the reference (a static "
        "output, not an array, must be the same object or equal)",
    )


def _fmt(value: Any) -> str:
    if np.iscomplexobj(value):
        return str(value)
    return np.format_float_positional(np.float64(value), precision=8, trim="-")


def _to_numpy(leaf: Any) -> np.ndarray:
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)  # typed PRNG keys compare by their bits
    return np.asarray(jax.device_get(leaf))


def verify_outputs(
    reference: Any,
    candidate: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    inputs: str = "user inputs",
) -> Check:
    """Compare two output pytrees leaf by leaf.

    **Arguments:**

    - `reference`: the reference outputs (any pytree of arrays or scalars).
    - `candidate`: the candidate's outputs for the same inputs.
    - `rtol`: the largest allowed robust relative error; by default chosen per dtype
        (float64 1e-9, float32 1e-4, bfloat16/float16 2e-2).
    - `atol`: the magnitude floor in `|a - b| / (|b| + atol)`; by default a fraction of the
        largest finite magnitude in each reference leaf.
    - `inputs`: a name for the input set, used in messages.

    **Returns:**

    A [`superopt.Check`][] naming the worst leaf and index.
    """
    ref_leaves, ref_tree = jax.tree_util.tree_flatten_with_path(reference)
    cand_leaves, cand_tree = jax.tree_util.tree_flatten_with_path(candidate)
    if ref_tree != cand_tree:
        message = _STRUCTURE_MSG.format(ref=ref_tree, cand=cand_tree)
        return Check(inputs, False, math.inf, "output structure", f"On {inputs}, {message}")
    worst: tuple[float, str, str] | None = None  # (error, where, message)
    failure: tuple[float, str, str] | None = None
    for (path, ref_leaf), (_, cand_leaf) in zip(ref_leaves, cand_leaves):
        name = "output" + jax.tree_util.keystr(path)
        if is_array_leaf(ref_leaf) and is_array_leaf(cand_leaf):
            result = _compare_leaf(_to_numpy(ref_leaf), _to_numpy(cand_leaf), rtol, atol)
        else:
            result = _compare_static(ref_leaf, cand_leaf)
        where = name if result.index is None else f"{name}, index {result.index}"
        entry = (result.error, where, f"{name} {result.detail}" if result.detail else "")
        if worst is None or entry[0] > worst[0]:
            worst = entry
        if not result.ok and (failure is None or entry[0] > failure[0]):
            failure = entry
    if failure is not None:
        error, where, detail = failure
        return Check(inputs, False, error, where, f"On {inputs}, {detail}.")
    if worst is None:
        return Check(inputs, True, 0.0, "", "")
    return Check(inputs, True, worst[0], worst[1], "")


def random_like(
    leaves: Sequence[Any], rng: np.random.Generator, hold_numbers: bool = False
) -> list[Any]:
    """Fresh random values with the shapes and dtypes of `leaves`.

    Floats are `normal * 10**U(-2, 2)` element by element (non-negative where every user
    value was non-negative, so that `log`/`sqrt` domains stay valid); integers are drawn in
    `[min, max]` of the user's values, so indices that were valid stay valid; booleans are
    fair coin flips. Python scalars stay Python scalars (their weak typing is kept), and
    leaves that are not plain numeric arrays (PRNG keys, ...) or not arrays at all (an
    activation function, held static) are reused as they are.

    **Arguments:**

    - `leaves`: the user's flattened argument leaves.
    - `rng`: the numpy generator to draw from.
    - `hold_numbers`: reuse Python numbers too (they are held static).

    **Returns:**

    A list of new leaves, one per input leaf.
    """
    out: list[Any] = []
    for leaf in leaves:
        if not is_array_leaf(leaf, hold_numbers):  # held static (a function, ...): kept
            out.append(leaf)
            continue
        if is_python_number(leaf):
            drawn = _draw(np.asarray(leaf), rng)
            out.append(type(leaf)(drawn.item()))
            continue
        try:
            host = np.asarray(jax.device_get(leaf))
        except Exception:
            out.append(leaf)
            continue
        if host.dtype.kind not in "biufc":
            out.append(leaf)
            continue
        out.append(_draw(host, rng))
    return out


def _draw(host: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shape, dtype = host.shape, host.dtype
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        low = int(host.min()) if host.size else 0
        high = int(host.max()) if host.size else 0
        return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    values = rng.standard_normal(shape) * 10.0 ** rng.uniform(-2.0, 2.0, shape)
    real = host.real if dtype.kind == "c" else host
    if host.size and bool(np.all(real >= 0)):
        values = np.abs(values)
    if dtype.kind == "c":
        values = values + 1j * rng.standard_normal(shape) * 10.0 ** rng.uniform(-2, 2, shape)
    return np.asarray(values).astype(dtype)


def _split(args: Sequence[Any], static_argnums: tuple[int, ...]) -> tuple[list[Any], Any]:
    dynamic = [a for i, a in enumerate(args) if i not in static_argnums]
    return jax.tree_util.tree_flatten(dynamic)


def _rebuild(
    args: Sequence[Any], static_argnums: tuple[int, ...], leaves: list[Any], tree: Any
) -> tuple[Any, ...]:
    dynamic = iter(jax.tree_util.tree_unflatten(tree, leaves))
    return tuple(a if i in static_argnums else next(dynamic) for i, a in enumerate(args))


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def verify(
    reference: Callable[..., Any],
    candidate: Callable[..., Any],
    *args: Any,
    num_random: int = 3,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    static_argnums: int | Sequence[int] = (),
    time_budget_s: float | None = None,
    hold_numbers: bool = False,
) -> Verdict:
    """Check that `candidate` computes what `reference` computes.

    Both are jitted and run on the default backend, first on `args`, then on `num_random`
    fresh random inputs of the same shapes and dtypes (see `random_like`). Output
    structures, shapes and dtypes must match; float outputs must agree within a
    dtype-aware tolerance, with NaN and infinity positions identical; integer and boolean
    outputs must be equal. A candidate that raises gives a failed verdict, not an error.

    ```python
    verdict = superopt.verify(lambda a, b, c: (a @ b) @ c, lambda a, b, c: a @ (b @ c), a, b, c)
    verdict.raise_if_failed()
    ```

    **Arguments:**

    - `reference`: the original function.
    - `candidate`: the function that should replace it; takes the same arguments.
    - `*args`: example arguments (pytrees of arrays; static ones named by `static_argnums`).
    - `num_random`: how many random input sets to try besides the user's.
    - `seed`: seed of the random inputs.
    - `rtol`: the largest allowed relative error; by default chosen per output dtype.
    - `atol`: the magnitude floor of the relative error; by default scaled by the
        reference's largest magnitude per output leaf.
    - `static_argnums`: positions of arguments passed through unchanged (and static
        under `jax.jit`).
    - `time_budget_s`: for programs slow to run: once this many seconds have gone into
        checks, the remaining random input sets are skipped, but the user's inputs and
        at least one random set are always checked. `None` checks every set.
    - `hold_numbers`: hold the Python numbers among the arguments static (as
        `eqx.filter_jit` does) rather than trace them: for a function that branches on
        one. They are not drawn at random either.

    **Returns:**

    A [`superopt.Verdict`][]; `bool(verdict)` says whether the candidate passed.

    **Raises:**

    `VerificationError` if the *reference* itself fails on the inputs.
    """
    if isinstance(static_argnums, int):
        static_argnums = (static_argnums,)
    static_argnums = tuple(static_argnums)
    ref_fn = jit_static(reference, args, static_argnums, hold_numbers)
    cand_fn = jit_static(candidate, args, static_argnums, hold_numbers)
    leaves, tree = _split(args, static_argnums)
    input_sets: list[tuple[str, tuple[Any, ...]]] = [("user inputs", tuple(args))]
    for k in range(num_random):
        rng = np.random.default_rng([seed, k])
        drawn = random_like(leaves, rng, hold_numbers)
        input_sets.append((f"random inputs #{k + 1}", _rebuild(args, static_argnums, drawn, tree)))

    checks: list[Check] = []
    start = time.perf_counter()
    # On GPU and TPU, float32 matmuls default to reduced-precision passes (TF32, bf16), whose
    # rounding would swamp the float32 tolerance and fail sound regroupings; equivalence is
    # judged at full precision. Dots with an explicit precision keep theirs.
    with jax.default_matmul_precision("highest"):
        for name, call_args in input_sets:
            check = _check_one(ref_fn, cand_fn, reference, candidate, name, call_args, rtol, atol)
            checks.append(check)
            if not check.ok:
                # The first failure is the answer; more input sets would only cost time.
                break
            spent = time.perf_counter() - start
            if time_budget_s is not None and len(checks) >= 2 and spent > time_budget_s:
                break

    failed = [c for c in checks if not c.ok]
    worst = failed[0] if failed else max(checks, key=lambda c: c.max_rel_error)
    where = f"{worst.inputs}, {worst.where}" if worst.where else worst.inputs
    if failed:
        message = f"{_name(candidate)} does not match {_name(reference)}. {worst.message}"
    else:
        message = (
            f"{_name(candidate)} matches {_name(reference)} on {len(checks)} input set(s); "
            f"max relative error {worst.max_rel_error:.3g} at {where}."
        )
    return Verdict(not failed, worst.max_rel_error, where, message, tuple(checks))


def _name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return f"`{name}`"


def _check_one(
    ref_fn: Callable[..., Any],
    cand_fn: Callable[..., Any],
    reference: Callable[..., Any],
    candidate: Callable[..., Any],
    name: str,
    call_args: tuple[Any, ...],
    rtol: float | None,
    atol: float | None,
) -> Check:
    try:
        expected = jax.block_until_ready(ref_fn(*call_args))
    except Exception as err:
        raise VerificationError(
            f"the reference function {_name(reference)} raised on {name} ({_describe(err)}); "
            "verification needs a reference that runs on the example arguments"
        ) from err
    try:
        got = jax.block_until_ready(cand_fn(*call_args))
    except Exception as err:
        return Check(
            name,
            False,
            math.inf,
            "candidate raised",
            f"On {name}, the candidate {_name(candidate)} raised {_describe(err)}.",
        )
    return verify_outputs(expected, got, rtol=rtol, atol=atol, inputs=name)


def jit_static(
    fn: Callable[..., Any],
    args: Sequence[Any],
    static_argnums: tuple[int, ...],
    hold_numbers: bool = False,
    static_outputs: bool = True,
) -> Callable[..., Any]:
    """`jax.jit(fn, static_argnums=...)` for calls like `fn(*args)`, or `fn` itself when a
    static argument cannot be hashed. Where a leaf of the other arguments is not an array
    (an Equinox model's activation function), JAX refuses it, so the leaves that are not
    arrays are held static too, as `eqx.filter_jit` holds them (`superopt._leaves`), and
    so are Python numbers with `hold_numbers`. So are the leaves of the result that are not
    arrays, unless `static_outputs` is false: a promise that there are none, which keeps
    the plain `jax.jit`, a little cheaper to call."""
    try:
        for i in static_argnums:
            if i < len(args):
                hash(args[i])
    except TypeError:
        return fn
    if static_outputs or has_static_leaves(args, static_argnums, hold_numbers):
        return filter_jit(fn, static_argnums, hold_numbers)
    return jax.jit(fn, static_argnums=static_argnums)
