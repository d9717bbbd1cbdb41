"""Small helpers shared by the tests: tree comparison and trace-codegen round trips."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import superopt


def _leaves(tree: Any) -> list[Any]:
    return jax.tree_util.tree_leaves(tree)


def tree_allclose(x: Any, y: Any, *, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Whether two pytrees have one structure and leaves equal within tolerance."""
    if jax.tree_util.tree_structure(x) != jax.tree_util.tree_structure(y):
        return False
    for a, b in zip(_leaves(x), _leaves(y)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol,
                           equal_nan=True):  # fmt: skip
            return False
    return True


def assert_tree_allclose(
    actual: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 1e-6, what: str = ""
) -> None:
    """Like `tree_allclose`, but raises an AssertionError naming the worst leaf."""
    sa, se = jax.tree_util.tree_structure(actual), jax.tree_util.tree_structure(expected)
    assert sa == se, f"{what}: tree structures differ: {sa} vs {se}"
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(expected)]
    for path, a, b in zip(paths, _leaves(actual), _leaves(expected)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, f"{what}{path}: shape {a.shape} != {b.shape}"
        assert a.dtype == b.dtype, f"{what}{path}: dtype {a.dtype} != {b.dtype}"
        np.testing.assert_allclose(
            a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol,
            equal_nan=True, err_msg=f"{what}{path}",
        )  # fmt: skip


def roundtrip(fn: Callable[..., Any], *args: Any, static_argnums: Sequence[int] = ()):
    """`fn` traced to the IR and compiled back from the rendered source, same signature."""
    traced = superopt.trace(fn, *args, static_argnums=static_argnums)
    flat = superopt.to_callable(traced.program)

    def call(*call_args: Any) -> Any:
        out = flat(*traced.flatten_args(call_args))
        return jax.tree_util.tree_unflatten(traced.out_tree, out)

    call.traced = traced  # type: ignore[attr-defined]
    return call


def float_argnums(args: Sequence[Any]) -> tuple[int, ...]:
    """Positions of the arguments whose leaves are all inexact (differentiable)."""
    return tuple(
        i
        for i, a in enumerate(args)
        if _leaves(a) and all(jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in _leaves(a))
    )


def scalar_loss(fn: Callable[..., Any]) -> Callable[..., jax.Array]:
    """A scalar loss of `fn`'s float outputs with fixed, uneven weights per element.

    Uneven weights keep a gradient check from missing a permuted or mis-summed result.
    """

    def loss(*args: Any) -> jax.Array:
        total = jnp.zeros((), jnp.float32)
        for leaf in _leaves(fn(*args)):
            if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                continue
            weights = jnp.cos(jnp.arange(leaf.size, dtype=leaf.dtype)).reshape(leaf.shape)
            total = total + jnp.sum(leaf * weights).astype(jnp.float32)
        return total

    return loss
