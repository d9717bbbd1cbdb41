"""`@superopt.jit`: `superopt.optimize` once per input signature, like `jax.jit`."""

from __future__ import annotations

import functools
import inspect
import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

from ._api import _NOT_CALLABLE_MSG, Optimized, _function_name, optimize
from ._errors import SignatureError, TraceError
from ._leaves import StaticLeaves, is_array_leaf, is_python_number, split_leaves
from ._trace import ArgSpec, jit_declared_statics

_UNHASHABLE_STATIC_MSG = (
    "static argument {which} ({value!r}) is not hashable, so @superopt.jit cannot key its "
    "cache on it. Pass a hashable value (a tuple instead of a list, say), or call "
    "`superopt.optimize(fn, *args, static_argnums=...)` directly."
)

_Parameter = inspect.Parameter
_POSITIONAL = (_Parameter.POSITIONAL_ONLY, _Parameter.POSITIONAL_OR_KEYWORD)
_VARIADIC = (_Parameter.VAR_POSITIONAL, _Parameter.VAR_KEYWORD)
# A call's layout: how many positional arguments, and the names of the keyword ones, sorted.
_Layout = tuple[int, tuple[str, ...]]


class Jitted:
    """`@superopt.jit`: optimizes a function once per input signature, like `jax.jit`.

    The signature is the pytree structure of the arguments, the shape, dtype and weak
    typing of each array leaf (a Python scalar is not a typed one), the other leaves (an
    Equinox model's activation function: held static, as under `eqx.filter_jit`, by value
    where hashable, else by identity), the names of the keyword arguments, and the values
    of the static arguments. Each new signature runs `superopt.optimize` on the first
    arguments that have it; later calls reuse the result. Where the function branches on
    a Python number among its arguments (an Equinox `Dropout`'s `inference` flag), so
    that `superopt.optimize` held the numbers static, their values are part of the
    signature too: another value optimizes again.

    Keyword arguments are dynamic (pytrees of arrays) unless named in `static_argnames`,
    as in `jax.jit`; the order they come in does not matter, but passing an argument by
    keyword is another signature than passing it by position. Where the function's
    signature can be read, a parameter named in `static_argnames` is static when passed
    by position too, and one whose position is in `static_argnums` when passed by
    keyword, unless both options are given (then each counts only as it says, as in
    `jax.jit`).

    **Arguments:**

    - `fn`: the function to optimize (a `jax.jit` function's own static arguments are
      static here too).
    - `static_argnums`: positions of static arguments: hashable Python values, not
      arrays, that key the cache (negative ones count from the end of the call).
    - `static_argnames`: names of static keyword arguments (a str or a sequence of str).
    - `**options`: the other keyword options of `superopt.optimize` (`budget`, ...).

    **Raises:** `ValueError` if `static_argnums` is out of range for the function's
    positional parameters or `static_argnames` names a parameter it does not take by
    keyword (both as `jax.jit` checks them); `TypeError` if they are not ints and strs.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        /,
        *,
        static_argnums: int | Sequence[int] | None = None,
        static_argnames: str | Iterable[str] | None = None,
        **options: Any,
    ):
        if not callable(fn):
            raise TraceError(_NOT_CALLABLE_MSG.format(kind=type(fn).__name__, value=fn))
        nums, names = _static_arguments(fn, static_argnums, static_argnames)
        # A jax.jit function's own static arguments are static here too: JAX holds them so.
        declared_nums, declared_names = jit_declared_statics(fn)
        self._static_argnums = tuple(dict.fromkeys((*nums, *declared_nums)))
        self._static_argnames = names | frozenset(declared_names)
        self._fn = fn
        self._options = options
        self._optimized: dict[Any, Optimized] = {}
        self._static: dict[_Layout, tuple[int, ...]] = {}
        self._by_numbers: set[Any] = set()
        try:
            functools.update_wrapper(self, fn, updated=())
        except (AttributeError, TypeError):
            pass

    @property
    def optimized(self) -> dict[Any, Optimized]:
        """The `Optimized` functions built so far, by signature. Each takes its arguments
        as the call that built it passed them (keyword ones by name or, in the order of
        their sorted names, by position after the others)."""
        return dict(self._optimized)

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        # Keyword arguments go after the positional ones, in the order of their names.
        names = tuple(sorted(kwargs)) if kwargs else ()
        flat = (*args, *(kwargs[k] for k in names)) if kwargs else args
        layout = (len(args), names)
        static = self._static.get(layout)
        if static is None:
            static = self._static[layout] = self._static_positions(layout)
        base, has_tracers = self._signature(flat, layout, static)
        # A function that branches on a Python number was traced with the numbers held
        # static (`Traced.hold_numbers`): for it, their values are part of the signature.
        key = (base, _numbers(flat, static)) if base in self._by_numbers else base
        opt = self._optimized.get(key)
        if opt is None:
            target = _with_keywords(self._fn, layout) if names else self._fn
            examples = flat
            if has_tracers:
                # Inside another transformation: optimize on concrete stand-ins of the same
                # shapes, outside the enclosing trace, then call through with the tracers.
                examples = tuple(_concrete_like(a, i in static) for i, a in enumerate(flat))
                with jax.ensure_compile_time_eval():
                    opt = optimize(target, *examples, static_argnums=static, **self._options)
            else:
                opt = optimize(target, *examples, static_argnums=static, **self._options)
            if opt._traced.hold_numbers and key is base:
                self._by_numbers.add(base)
                key = (base, _numbers(flat, static))
            self._optimized[key] = opt
        return opt(*flat)

    def _static_positions(self, layout: _Layout) -> tuple[int, ...]:
        """The static positions among a call's flat arguments (`__call__`)."""
        nargs, names = layout
        positions = {i + nargs if i < 0 else i for i in self._static_argnums}
        keywords = (nargs + j for j, name in enumerate(names) if name in self._static_argnames)
        return (*sorted(i for i in positions if 0 <= i < nargs), *keywords)

    def _signature(
        self, flat: tuple[Any, ...], layout: _Layout, static: tuple[int, ...]
    ) -> tuple[Any, bool]:
        static_values = []
        for i in static:  # positions within flat (`_static_positions`)
            try:
                hash(flat[i])
            except TypeError as err:
                nargs, names = layout
                which = i if i < nargs else repr(names[i - nargs])
                msg = _UNHASHABLE_STATIC_MSG.format(which=which, value=flat[i])
                raise SignatureError(msg) from err
            static_values.append((i, flat[i]))
        dynamic = [a for i, a in enumerate(flat) if i not in static]
        leaves, tree = jax.tree_util.tree_flatten(dynamic)
        # Leaves that are not arrays (a model's activation) are static, as under
        # eqx.filter_jit: another one optimizes again. `StaticLeaves` keys them by value, or
        # by identity where unhashable; the key holds them, so no id is reused meanwhile.
        arrays, statics = split_leaves(leaves)
        specs = tuple((spec.shape, str(spec.dtype), spec.weak) for spec in map(ArgSpec.of, arrays))
        has_tracers = any(isinstance(x, jax.core.Tracer) for x in arrays)
        key = (layout, tree, specs, StaticLeaves(statics), tuple(static_values))
        return key, has_tracers

    def __repr__(self) -> str:
        return f"<superopt.jit {_function_name(self._fn)}: {len(self._optimized)} signature(s)>"


def _numbers(flat: tuple[Any, ...], static: tuple[int, ...]) -> StaticLeaves:
    """The Python numbers among the leaves of the dynamic arguments, by position."""
    leaves = jax.tree_util.tree_leaves([a for i, a in enumerate(flat) if i not in static])
    return StaticLeaves([(k, leaf) for k, leaf in enumerate(leaves) if is_python_number(leaf)])


def _static_arguments(
    fn: Callable[..., Any],
    argnums: int | Sequence[int] | None,
    argnames: str | Iterable[str] | None,
) -> tuple[tuple[int, ...], frozenset[str]]:
    """`static_argnums` and `static_argnames`, each completed from the other through
    `fn`'s signature when only one is given, and checked against it, as `jax.jit` does."""
    nums = None if argnums is None else _index_tuple(argnums)
    names = None if argnames is None else _name_tuple(argnames)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin: no names to map, nothing to check
        return nums or (), frozenset(names or ())
    params = list(signature.parameters.values())
    by_name = _Parameter.POSITIONAL_OR_KEYWORD
    mapped = [(i, p.name) for i, p in enumerate(params) if p.kind is by_name]
    if nums is None and names is not None:
        nums = tuple(i for i, name in mapped if name in names)
    elif names is None and nums is not None:
        names = tuple(name for i, name in mapped if i in nums)
    nums, names = nums or (), names or ()

    fname = _function_name(fn)
    kinds = {p.kind for p in params}
    if _Parameter.VAR_POSITIONAL not in kinds:
        count = sum(p.kind in _POSITIONAL for p in params)
        for i in nums:
            if not -count <= i < count:
                raise ValueError(
                    f"static_argnums {i} is out of range: {fname} takes {count} positional "
                    "argument(s)"
                )
    for name in names:
        param = signature.parameters.get(name)
        if param is not None and param.kind is _Parameter.POSITIONAL_ONLY:
            raise ValueError(
                f"static_argnames names {name!r}, a positional-only parameter of {fname}; "
                "give its position in static_argnums instead"
            )
        if _Parameter.VAR_KEYWORD not in kinds and (
            param is None or param.kind is _Parameter.VAR_POSITIONAL
        ):
            takes = [p.name for p in params if p.kind not in _VARIADIC]
            raise ValueError(
                f"static_argnames names {name!r}, which is not a parameter of {fname} "
                f"(it takes {', '.join(takes) or 'no named parameters'})"
            )
    return nums, frozenset(names)


def _index_tuple(argnums: Any) -> tuple[int, ...]:
    items = (argnums,) if isinstance(argnums, int | np.integer) else argnums
    try:
        if any(isinstance(i, bool) for i in items):
            raise TypeError
        return tuple(operator.index(i) for i in items)
    except TypeError:
        raise TypeError(
            f"static_argnums must be an int or a sequence of ints, got {argnums!r}"
        ) from None


def _name_tuple(argnames: Any) -> tuple[str, ...]:
    items = (argnames,) if isinstance(argnames, str) else argnames
    try:
        names = tuple(items)
    except TypeError:
        names = (argnames,)
    if not all(isinstance(name, str) for name in names):
        raise TypeError(f"static_argnames must be a str or a sequence of str, got {argnames!r}")
    return names


def _with_keywords(fn: Callable[..., Any], layout: _Layout) -> Callable[..., Any]:
    """`fn` taking all its arguments by position: the positional ones, then the values of
    the keyword ones `layout` names, in that order. It bears `fn`'s name, for the report
    and the generated source, and a signature in which the keyword ones can be passed by
    name again: an `Optimized` built from it is called as the original call was."""
    nargs, names = layout

    def call(*flat: Any) -> Any:
        return fn(*flat[:nargs], **dict(zip(names, flat[nargs:])))

    name = _function_name(fn)
    call.__qualname__, call.__name__ = name, name.rsplit(".", 1)[-1]
    call.__module__ = getattr(fn, "__module__", None) or call.__module__
    call.__doc__ = getattr(fn, "__doc__", None)
    signature = _flat_signature(fn, layout)
    if signature is not None:
        call.__signature__ = signature  # type: ignore[attr-defined]
    return call


def _flat_signature(fn: Callable[..., Any], layout: _Layout) -> inspect.Signature | None:
    """The signature of `_with_keywords(fn, layout)`: `fn`'s first positional parameters
    (positional-only when `fn` names fewer than the call passed), then one parameter per
    keyword argument. `None` where `fn` has no signature or the names clash."""
    nargs, names = layout
    try:
        own = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    named = list(itertools.islice(itertools.takewhile(lambda p: p.kind in _POSITIONAL, own), nargs))
    if len(named) == nargs:
        first = [p.replace(default=_Parameter.empty, annotation=_Parameter.empty) for p in named]
    else:
        first = [_Parameter(f"arg{i}", _Parameter.POSITIONAL_ONLY) for i in range(nargs)]
    rest = [_Parameter(n, _Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    try:
        return inspect.Signature([*first, *rest])
    except ValueError:  # a keyword argument named like a positional parameter
        return None


def _concrete_like(arg: Any, is_static: bool) -> Any:
    if is_static:
        return arg
    rng = np.random.default_rng(0)

    def leaf(x: Any) -> Any:
        if not is_array_leaf(x):
            return x
        spec = ArgSpec.of(x)
        dtype, shape = np.dtype(spec.dtype), spec.shape
        if spec.weak and shape == ():
            # A Python scalar of the same kind keeps the weak type the call will have.
            return np.ones((), dtype).item()
        if np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating):
            return rng.standard_normal(shape).astype(dtype)
        if dtype == np.bool_:
            return rng.integers(0, 2, shape).astype(dtype)
        return rng.integers(0, 8, shape).astype(dtype)

    return jax.tree_util.tree_map(leaf, arg)


def jit(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Optimize `fn` per input signature, like `jax.jit`.

    Use as `@superopt.jit`, `@superopt.jit(budget=4)` or `superopt.jit(fn, **options)`.
    Call the result with positional and keyword arguments, as `fn` takes them; keyword
    arguments are dynamic unless named in `static_argnames`, as in `jax.jit`:
    `@superopt.jit(static_argnames="training")` then `layer(x, training=False)`.

    **Arguments:**

    - `fn`: the function; omit it to get a decorator with `options` bound.
    - `**options`: `static_argnums`, `static_argnames` (see `Jitted`) and the keyword
      options of `superopt.optimize`.

    **Returns:** a `Jitted` callable (or a decorator making one).
    """
    if fn is None:
        return functools.partial(jit, **options)
    return Jitted(fn, **options)
