"""Argument leaves: which are traced as arrays and which are held static.

superopt follows `eqx.filter_jit`'s rule for the leaves of the dynamic arguments (those
not named in `static_argnums`): a JAX array, a NumPy array or a NumPy scalar is traced, and
every other leaf (an Equinox model's activation function, a string, ...) is static: closed
over when tracing, part of the optimized program's identity, and compared on every call.
One difference: a Python number (`bool`, `int`, `float`, `complex`) is traced too, as a
weakly typed array, where `eqx.filter_jit` holds it static. `superopt.optimize(f, x, 2.0)`
has always traced the `2.0` (so `opt(x, 3.0)` runs without optimizing again), and a value
that changes from call to call should not compile again. Where tracing a number fails (the
function branches on it: an Equinox `Dropout`'s `inference` flag), superopt traces again
with the Python numbers held static (`hold_numbers`), as `eqx.filter_jit` holds them.

Outputs follow `eqx.filter_jit`'s rule as it is: a leaf of the result that is not an array
(`is_array_output`: a JAX or NumPy array or a NumPy scalar) is static, returned on every
call as it was when the function was traced: an updated Equinox model keeps its activation
functions. That includes Python numbers: a function that returns `2.0` gives back `2.0`, not
a weakly typed array as `jax.jit` does, and a returned model keeps its `inference: bool`.

A static leaf is the same as another when it is the same object, or when `==` says so with
a `bool` (a `==` that raises or answers an array counts as "different"). Where a key is
needed (`@superopt.jit`, `jax.jit`'s cache) it is hashed by value where it is hashable,
else by identity; the key holds the leaf, so its `id` is not reused while the key lives.
"""

from __future__ import annotations

import functools
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

# `eqx.is_array` (jax.Array, np.ndarray, np.generic), plus what superopt also traces: Python
# numbers, as weakly typed arrays, and `jax.ShapeDtypeStruct`s, which trace abstractly
# (huge shapes without allocating them). Tracers are `jax.Array`s.
PYTHON_NUMBERS = (bool, int, float, complex)
_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct, *PYTHON_NUMBERS)


def is_python_number(leaf: Any) -> bool:
    """Whether a leaf is a Python number (a NumPy scalar, even `np.float64`, is not one)."""
    return isinstance(leaf, PYTHON_NUMBERS) and not isinstance(leaf, np.generic)


def is_array_leaf(leaf: Any, hold_numbers: bool = False) -> bool:
    """Whether an argument leaf is traced (an array or a number) rather than held static;
    with `hold_numbers`, Python numbers are held static too."""
    if hold_numbers and is_python_number(leaf):
        return False
    return isinstance(leaf, _ARRAY_TYPES)


def is_array_output(leaf: Any) -> bool:
    """Whether an output leaf is an array (`eqx.is_array`); any other is static."""
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


def describe(value: Any) -> str:
    """A few words for a static value: a function by its name, anything else by its
    `repr`, cut short (a static leaf can be a large object)."""
    name = getattr(value, "__qualname__", None)
    if callable(value) and isinstance(name, str):
        module = getattr(value, "__module__", None)
        name = f"{module}.{name}" if module else name
        return f"{type(value).__name__} {name}"
    return f"{type(value).__name__} {reprlib.repr(value)}"


def same_static(a: Any, b: Any) -> bool:
    """Whether static value `a` is `b`: the same object, or equal by an `==` that answers
    a `bool` (one that raises or answers an array, as arrays do, means "different")."""
    if a is b:
        return True
    try:
        equal = a == b
    except Exception:
        return False
    return bool(equal) if isinstance(equal, bool | np.bool_) else False


def _static_hash(value: Any) -> int:
    try:
        return hash(value)
    except Exception:  # unhashable: by identity (the key holds the value alive)
        return id(value)


class StaticLeaves:
    """The static leaves of a call, `(position among the leaves, value)` pairs, as a
    hashable key: by value where a leaf is hashable, else by identity; equal where each
    leaf is `same_static`."""

    __slots__ = ("_hash", "items")

    def __init__(self, items: Sequence[tuple[int, Any]]):
        self.items = tuple(items)
        self._hash = hash(tuple((k, _static_hash(v)) for k, v in self.items))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StaticLeaves) or len(other.items) != len(self.items):
            return False
        return all(k == j and same_static(a, b) for (k, a), (j, b) in zip(self.items, other.items))

    def __repr__(self) -> str:
        return f"StaticLeaves({self.items!r})"


@dataclass(frozen=True, eq=False)
class StaticLeaf:
    """A leaf of the example arguments that is held static.

    **Arguments:**

    - `index`: its position among the flattened leaves of the dynamic arguments.
    - `path`: where it is, as the user wrote the call: `[0].activation` is the
      `activation` field of the first positional argument.
    - `value`: the leaf itself.
    """

    index: int
    path: str
    value: Any


def split_leaves(
    leaves: Sequence[Any], hold_numbers: bool = False
) -> tuple[list[Any], list[tuple[int, Any]]]:
    """The array leaves, and the others with their positions (`is_array_leaf`)."""
    arrays: list[Any] = []
    statics: list[tuple[int, Any]] = []
    for k, leaf in enumerate(leaves):
        if is_array_leaf(leaf, hold_numbers):
            arrays.append(leaf)
        else:
            statics.append((k, leaf))
    return arrays, statics


def merge_leaves(arrays: Sequence[Any], statics: Sequence[tuple[int, Any]]) -> list[Any]:
    """The inverse of `split_leaves`: `statics` must be in the order of their positions."""
    leaves = list(arrays)
    for k, value in statics:
        leaves.insert(k, value)
    return leaves


def split_outputs(out: Any) -> tuple[list[Any], Any, tuple[tuple[int, Any], ...]]:
    """A result taken apart: its array leaves, its pytree structure, and its static leaves
    with their positions among the leaves (`is_array_output`)."""
    leaves, tree = jax.tree_util.tree_flatten(out)
    arrays = [leaf for leaf in leaves if is_array_output(leaf)]
    statics = tuple((k, leaf) for k, leaf in enumerate(leaves) if not is_array_output(leaf))
    return arrays, tree, statics


def merge_outputs(tree: Any, arrays: Sequence[Any], statics: Sequence[tuple[int, Any]]) -> Any:
    """The inverse of `split_outputs`."""
    return jax.tree_util.tree_unflatten(tree, merge_leaves(arrays, statics))


class _Held:
    """The structure and static leaves of a result, carried out of `jax.jit` in the output
    tree's structure (a pytree node without children), as `eqx.filter_jit` carries them.
    Compared by identity: nothing needs to hash or compare what a user returned."""

    __slots__ = ("statics", "tree")

    def __init__(self, tree: Any, statics: tuple[tuple[int, Any], ...]):
        self.tree, self.statics = tree, statics


jax.tree_util.register_pytree_node(_Held, lambda held: ((), held), lambda held, _: held)


def _dynamic(args: Sequence[Any], static_argnums: Sequence[int]) -> list[Any]:
    return [a for i, a in enumerate(args) if i not in static_argnums]


def _full(
    args: Sequence[Any], static_argnums: Sequence[int], tree: Any, leaves: Sequence[Any]
) -> list[Any]:
    dynamic = iter(jax.tree_util.tree_unflatten(tree, leaves))
    return [a if i in static_argnums else next(dynamic) for i, a in enumerate(args)]


def close_over_static(
    fn: Callable[..., Any],
    args: Sequence[Any],
    static_argnums: Sequence[int] = (),
    hold_numbers: bool = False,
) -> tuple[Callable[..., Any], list[Any]]:
    """`fn` as a function of the array leaves of `args` alone, returning the array leaves
    of its result alone, and those argument leaves.

    The static arguments and the static leaves of the others are closed over (what
    `eqx.filter_jit` does), so the result can be given to `jax.jit`, `jax.eval_shape` or a
    timer, which accept arrays only.
    """
    leaves, tree = jax.tree_util.tree_flatten(_dynamic(args, static_argnums))
    arrays, statics = split_leaves(leaves, hold_numbers)

    def bound(*flat: Any) -> Any:
        out = fn(*_full(args, static_argnums, tree, merge_leaves(flat, statics)))
        return split_outputs(out)[0]

    return bound, arrays


def has_static_leaves(
    args: Sequence[Any], static_argnums: Sequence[int] = (), hold_numbers: bool = False
) -> bool:
    """Whether a leaf of the dynamic arguments is held static."""
    leaves = jax.tree_util.tree_leaves(_dynamic(args, static_argnums))
    return not all(is_array_leaf(leaf, hold_numbers) for leaf in leaves)


def filter_jit(
    fn: Callable[..., Any], static_argnums: Sequence[int] = (), hold_numbers: bool = False
) -> Callable[..., Any]:
    """`jax.jit(fn, static_argnums=...)` that also holds the non-array leaves of the other
    arguments static, as `eqx.filter_jit` does: it compiles once per call layout, static
    arguments and static leaves (`StaticLeaves`), and passes only the array leaves. The
    static arguments must be hashable, as for `jax.jit`. The leaves of the result that
    are not arrays come back as they were when it compiled (`split_outputs`)."""
    static_argnums = tuple(static_argnums)

    def inner(key: tuple[Any, ...], *arrays: Any) -> Any:
        nargs, static_args, tree, statics = key
        dynamic = iter(jax.tree_util.tree_unflatten(tree, merge_leaves(arrays, statics.items)))
        given = dict(static_args)
        out = fn(*[given[i] if i in given else next(dynamic) for i in range(nargs)])
        out_arrays, out_tree, out_statics = split_outputs(out)
        return out_arrays, _Held(out_tree, out_statics)

    jitted = jax.jit(inner, static_argnums=0)

    def call(*args: Any) -> Any:
        leaves, tree = jax.tree_util.tree_flatten(_dynamic(args, static_argnums))
        arrays, statics = split_leaves(leaves, hold_numbers)
        static_args = tuple((i, args[i]) for i in static_argnums if i < len(args))
        key = (len(args), static_args, tree, StaticLeaves(statics))
        out_arrays, held = jitted(key, *arrays)
        return merge_outputs(held.tree, out_arrays, held.statics)

    try:
        functools.update_wrapper(call, fn, updated=())
    except (AttributeError, TypeError):
        pass
    return call
