"""`@superopt.jit`: `superopt.optimize` once per input signature, like `jax.jit`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ._api import _NOT_CALLABLE_MSG, Optimized, _function_name, optimize
from ._errors import SignatureError, TraceError
from ._trace import ArgSpec, static_positions

_UNHASHABLE_STATIC_MSG = (
    "static argument {index} ({value!r}) is not hashable, so @superopt.jit cannot key its "
    "cache on it. Pass a hashable value (a tuple instead of a list, say), or call "
    "`superopt.optimize(fn, *args, static_argnums=...)` directly."
)


class Jitted:
    """`@superopt.jit`: optimizes a function once per input signature, like `jax.jit`.

    The signature is the pytree structure of the arguments, the shape, dtype and weak
    typing of each leaf (a Python scalar is not a typed one), and the values of the static
    arguments. Each new signature runs
    `superopt.optimize` on the first arguments that have it; later calls reuse the result.

    **Arguments:**

    - `fn`: the function to optimize.
    - `**options`: keyword options of `superopt.optimize` (`static_argnums`, `budget`, ...).
    """

    def __init__(self, fn: Callable[..., Any], **options: Any):
        if not callable(fn):
            raise TraceError(_NOT_CALLABLE_MSG.format(kind=type(fn).__name__, value=fn))
        static = options.get("static_argnums", ())
        options["static_argnums"] = (static,) if isinstance(static, int) else tuple(static)
        self._fn = fn
        self._options = options
        self._optimized: dict[Any, Optimized] = {}
        try:
            functools.update_wrapper(self, fn, updated=())
        except (AttributeError, TypeError):
            pass

    @property
    def optimized(self) -> dict[Any, Optimized]:
        """The `Optimized` functions built so far, by signature."""
        return dict(self._optimized)

    def __call__(self, *args: Any) -> Any:
        static = static_positions(self._options["static_argnums"], len(args))
        key, has_tracers = self._signature(args, static)
        opt = self._optimized.get(key)
        if opt is None:
            examples = args
            if has_tracers:
                # Inside another transformation: optimize on concrete stand-ins of the same
                # shapes, outside the enclosing trace, then call through with the tracers.
                examples = tuple(_concrete_like(a, i in static) for i, a in enumerate(args))
                with jax.ensure_compile_time_eval():
                    opt = optimize(self._fn, *examples, **self._options)
            else:
                opt = optimize(self._fn, *examples, **self._options)
            self._optimized[key] = opt
        return opt(*args)

    def _signature(self, args: tuple[Any, ...], static: tuple[int, ...]) -> tuple[Any, bool]:
        static_values = []
        for i in static:  # positions within args (`static_positions`)
            try:
                hash(args[i])
            except TypeError as err:
                raise SignatureError(_UNHASHABLE_STATIC_MSG.format(index=i, value=args[i])) from err
            static_values.append((i, args[i]))
        dynamic = [a for i, a in enumerate(args) if i not in static]
        leaves, tree = jax.tree_util.tree_flatten(dynamic)
        specs = tuple((spec.shape, str(spec.dtype), spec.weak) for spec in map(ArgSpec.of, leaves))
        has_tracers = any(isinstance(x, jax.core.Tracer) for x in leaves)
        return (len(args), tree, specs, tuple(static_values)), has_tracers

    def __repr__(self) -> str:
        return f"<superopt.jit {_function_name(self._fn)}: {len(self._optimized)} signature(s)>"


def _concrete_like(arg: Any, is_static: bool) -> Any:
    if is_static:
        return arg
    rng = np.random.default_rng(0)

    def leaf(x: Any) -> Any:
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

    **Arguments:**

    - `fn`: the function; omit it to get a decorator with `options` bound.
    - `**options`: keyword options of `superopt.optimize`.

    **Returns:** a `Jitted` callable (or a decorator making one).
    """
    if fn is None:
        return functools.partial(jit, **options)
    return Jitted(fn, **options)
