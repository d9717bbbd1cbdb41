"""Testing tools: random tensor programs for hypothesis, random inputs, equivalence checks.

```python
from hypothesis import given
import superopt.testing as st

@given(st.programs(max_ops=6))
def test_my_rewrite(case):
    st.check_equivalent(case.fn, my_rewrite(case.fn), *case.args, grad=True)
```

Generated programs stay numerically tame (logs and square roots of `|x| + 1`, division
by `1 + y²`, a `tanh` before anything that could overflow) so that their values and
gradients are finite and comparisons with relative tolerances are meaningful.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as hst
from jax import lax

__all__ = ["SUPPORTED_OPS", "ProgramCase", "arrays_for", "check_equivalent", "programs"]


# ---------------------------------------------------------------- random inputs


def _seed_of(seed: int | jax.Array) -> int:
    if isinstance(seed, jax.Array):
        return int(np.asarray(jax.random.key_data(seed)).ravel()[-1])
    return int(seed)


def arrays_for(specs: Any, seed: int | jax.Array = 0) -> Any:
    """Random arrays for a pytree of `jax.ShapeDtypeStruct`s (or anything with
    `.shape` and `.dtype`).

    Floats are uniform in [-2, 2], integers uniform in [0, 4) (valid small indices),
    booleans fair coin flips. The same `seed` always gives the same arrays.

    **Arguments:**

    - `specs`: a spec or a pytree of specs; concrete arrays are used as specs too.
    - `seed`: an integer or a PRNG key.

    **Returns:** a pytree of `jax.Array`s of the same structure.
    """
    rng = np.random.default_rng(_seed_of(seed))

    def one(spec: Any) -> jax.Array:
        shape, dtype = tuple(spec.shape), np.dtype(spec.dtype)
        if dtype == np.bool_:
            value = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            value = rng.integers(0, 4, size=shape)
        elif np.issubdtype(dtype, np.complexfloating):
            value = rng.uniform(-2, 2, shape) + 1j * rng.uniform(-2, 2, shape)
        else:
            value = rng.uniform(-2.0, 2.0, shape)
        return jnp.asarray(value, dtype=dtype)

    return jax.tree_util.tree_map(one, specs, is_leaf=lambda x: hasattr(x, "shape"))


def _spec_of(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


# ---------------------------------------------------------------- check_equivalent


def _flat_grad(fn: Callable[..., Any], args: tuple[Any, ...]) -> list[jax.Array]:
    """Gradient of a fixed, unevenly weighted scalar loss of `fn`'s float outputs with
    respect to every inexact leaf of `args` (uneven weights keep a permuted or mis-summed
    result from passing)."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    wrt = [i for i, x in enumerate(leaves) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]

    def loss(float_leaves: list[Any]) -> jax.Array:
        full = list(leaves)
        for i, x in zip(wrt, float_leaves):
            full[i] = x
        out = fn(*jax.tree_util.tree_unflatten(tree, full))
        total = jnp.zeros((), jnp.float32)
        for leaf in jax.tree_util.tree_leaves(out):
            leaf = jnp.asarray(leaf)
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                continue
            weights = jnp.cos(jnp.arange(leaf.size, dtype=jnp.float32)).reshape(leaf.shape)
            total = total + jnp.sum(leaf.astype(jnp.float32) * weights)
        return total

    return jax.grad(loss)([leaves[i] for i in wrt])


def check_equivalent(
    f: Callable[..., Any],
    g: Callable[..., Any],
    *arg_specs: Any,
    num_random: int = 3,
    grad: bool = False,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Check that `g` computes what `f` computes, on random inputs.

    For each of `num_random` seeds, draws inputs for `arg_specs` with `arrays_for`,
    and compares the outputs of both functions with `superopt.verify` (dtype-aware
    tolerances; NaN and infinity positions must agree); with `grad=True` it compares
    the gradients of a fixed scalar loss of the outputs with respect to every
    floating-point input too.

    **Arguments:**

    - `f`: the reference function.
    - `g`: the function that should be equivalent to it (same signature).
    - `*arg_specs`: one per positional argument: a `jax.ShapeDtypeStruct`, a concrete
      array (checked as given, then its shape and dtype are used), or a pytree of those.
    - `num_random`: how many random inputs to try.
    - `grad`: whether gradients must match too.
    - `seed`: the first random seed.
    - `rtol`, `atol`: override `superopt.verify`'s dtype-aware tolerances.

    **Returns:** nothing; raises `AssertionError` naming the inputs, the output leaf and
    element of the worst mismatch, and both values.
    """
    from ._verify import verify  # verify imports the tracing stack; only load it here

    leaves = jax.tree_util.tree_leaves(arg_specs)
    trials: list[tuple[str, tuple[Any, ...]]] = []
    if leaves and all(isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in leaves):
        trials.append(("the arguments given", tuple(arg_specs)))
    specs = jax.tree_util.tree_map(
        _spec_of, arg_specs, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
    )
    for k in range(num_random):
        trials.append((f"random inputs (seed {seed + k})", arrays_for(specs, seed + k)))
    pairs = [("outputs", f, g)]
    if grad:
        pairs.append(("gradients", lambda *a: _flat_grad(f, a), lambda *a: _flat_grad(g, a)))
    for label, args in trials:
        for what, ref_fn, cand_fn in pairs:
            verdict = verify(ref_fn, cand_fn, *args, num_random=0, rtol=rtol, atol=atol)
            if not verdict.ok:
                check = verdict.checks[-1]
                detail = check.message.removeprefix(f"On {check.inputs}, ")
                raise AssertionError(
                    f"the {what} of {_fn_name(g)} differ from those of {_fn_name(f)} on "
                    f"{label}, at {check.where}: {detail}"
                )


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


# ---------------------------------------------------------------- program generation


@dataclass(frozen=True)
class ProgramCase:
    """A randomly generated tensor program.

    **Arguments:**

    - `fn`: a plain JAX function of positional array arguments.
    - `args`: a `jax.ShapeDtypeStruct` per argument.
    - `description`: the program, one step a line, for failure reports.
    - `seed`: the seed of its example inputs (see `arrays`).
    """

    fn: Callable[..., Any]
    args: tuple[jax.ShapeDtypeStruct, ...]
    description: str
    seed: int = 0
    ops: frozenset[str] = field(default_factory=frozenset)

    def arrays(self, seed: int | None = None) -> tuple[jax.Array, ...]:
        """Concrete example arguments (from `self.seed` unless another is given)."""
        return tuple(arrays_for(self.args, self.seed if seed is None else seed))

    def __repr__(self) -> str:
        specs = ", ".join(f"{np.dtype(a.dtype).name}{list(a.shape)}" for a in self.args)
        return f"ProgramCase(args=({specs}), seed={self.seed})\n{self.description}"


@dataclass
class _Value:
    id: int
    shape: tuple[int, ...]
    dtype: np.dtype
    bound: float  # an upper bound on |value|, to keep the next op tame

    @property
    def ndim(self) -> int:
        return len(self.shape)


Env = dict[int, Any]
Apply = Callable[[Env], Any]


class _Builder:
    """Accumulates the steps of one random program while hypothesis draws choices."""

    def __init__(self, draw: Any, dtypes: Sequence[np.dtype], max_rank: int, max_dim: int):
        self.draw = draw
        self.dtypes = list(dtypes)
        self.max_rank = max_rank
        self.max_dim = max_dim
        self.ids = itertools.count()
        self.inputs: list[_Value] = []
        self.pool: list[_Value] = []
        self.steps: list[tuple[int, Apply]] = []
        self.lines: list[str] = []
        self.used: set[str] = set()
        self.rng = np.random.default_rng(draw(hst.integers(0, 2**31 - 1)))

    # -- helpers

    def shape(self, rank: int | None = None) -> tuple[int, ...]:
        if rank is None:
            rank = self.draw(hst.integers(0, self.max_rank))
        return tuple(self.draw(hst.integers(1, self.max_dim)) for _ in range(rank))

    def new_input(self, shape: tuple[int, ...], dtype: np.dtype) -> _Value:
        v = _Value(next(self.ids), shape, dtype, 2.0)
        self.inputs.append(v)
        self.pool.append(v)
        self.lines.append(f"v{v.id} = input {dtype.name}{list(shape)}")
        return v

    def emit(self, text: str, shape, dtype, bound: float, apply: Apply, ops: Sequence[str]):
        v = _Value(next(self.ids), tuple(shape), np.dtype(dtype), float(bound))
        self.steps.append((v.id, apply))
        self.lines.append(f"v{v.id} = {text}")
        self.pool.append(v)
        self.used.update(ops)
        return v

    def pick(self, pred: Callable[[_Value], bool] = lambda v: True) -> _Value | None:
        options = [v for v in self.pool if pred(v)]
        if not options:
            return None
        # Prefer recent values so that programs are chains, not bags of leaves.
        weights = [i + 1 for i in range(len(options))]
        idx = self.draw(hst.integers(0, sum(weights) - 1))
        for v, w in zip(options, weights):
            if idx < w:
                return v
            idx -= w
        return options[-1]

    def need(self, pred: Callable[[_Value], bool], rank: int) -> _Value:
        """A value that satisfies `pred`, or a new input of rank `rank` if none does."""
        v = self.pick(pred)
        return v if v is not None else self.new_input(self.shape(rank), self.dtypes[0])

    def partner(self, x: _Value, shape: tuple[int, ...] | None = None) -> tuple[_Value | None, Any]:
        """An operand of `shape` (default `x`'s) and `x`'s dtype: a value, a new input,
        or a closed-over constant (returned as a numpy array)."""
        shape = x.shape if shape is None else shape
        kind = self.draw(hst.sampled_from(["value", "input", "const"]))
        if kind == "value":
            v = self.pick(lambda v: v.shape == shape and v.dtype == x.dtype and v is not x)
            if v is not None:
                return v, None
        if kind == "const" and shape:  # a closed-over scalar would trace as a literal
            return None, self.rng.uniform(-1.5, 1.5, shape).astype(x.dtype)
        return self.new_input(shape, x.dtype), None

    def tame(self, x: _Value, limit: float = 3.0) -> _Value:
        """`x`, or `tanh(x)` when `x` could be too large for the op that follows."""
        if x.bound <= limit:
            return x
        return self.emit(f"lax.tanh(v{x.id})", x.shape, x.dtype, 1.0,
                         lambda env, i=x.id: lax.tanh(env[i]), ["tanh"])  # fmt: skip


def _operand(env: Env, v: _Value | None, const: Any) -> Any:
    return env[v.id] if v is not None else const


def _name(v: _Value | None, const: Any) -> str:
    return f"v{v.id}" if v is not None else f"const{list(np.shape(const))}"


# Tame unary forms: (IR op, source template, function, bound of the result from the
# bound b of the operand, largest operand bound it takes without a tanh first)
_UNARY: dict[str, tuple[str, Callable[[Any], Any], Callable[[float], float], float]] = {
    "neg": ("-{x}", lambda x: lax.neg(x), lambda b: b, math.inf),
    "exp": ("exp({x})", lambda x: lax.exp(x), lambda b: math.exp(b), 3.0),
    "exp2": ("exp2({x})", lambda x: lax.exp2(x), lambda b: 2**b, 3.0),
    "expm1": ("expm1({x})", lambda x: lax.expm1(x), lambda b: math.exp(b), 3.0),
    "log": ("log(|{x}| + 1)", lambda x: lax.log(lax.abs(x) + 1), lambda b: math.log1p(b), math.inf),
    "log1p": ("log1p(|{x}|)", lambda x: lax.log1p(lax.abs(x)), lambda b: math.log1p(b), math.inf),
    "sqrt": ("sqrt(|{x}| + 1)", lambda x: lax.sqrt(lax.abs(x) + 1), lambda b: math.sqrt(b + 1), math.inf),
    "rsqrt": ("rsqrt({x}² + 1)", lambda x: lax.rsqrt(x * x + 1), lambda b: 1.0, math.inf),
    "cbrt": ("cbrt(|{x}| + 1)", lambda x: lax.cbrt(lax.abs(x) + 1), lambda b: (b + 1) ** (1 / 3), math.inf),
    "tanh": ("tanh({x})", lambda x: lax.tanh(x), lambda b: 1.0, math.inf),
    "logistic": ("logistic({x})", lambda x: lax.logistic(x), lambda b: 1.0, math.inf),
    "abs": ("|{x}|", lambda x: lax.abs(x), lambda b: b, math.inf),
    "sign": ("sign({x})", lambda x: lax.sign(x), lambda b: 1.0, math.inf),
    "floor": ("floor({x})", lambda x: lax.floor(x), lambda b: b + 1, math.inf),
    "ceil": ("ceil({x})", lambda x: lax.ceil(x), lambda b: b + 1, math.inf),
    "sin": ("sin({x})", lambda x: lax.sin(x), lambda b: 1.0, math.inf),
    "cos": ("cos({x})", lambda x: lax.cos(x), lambda b: 1.0, math.inf),
    "tan": ("tan({x})", lambda x: lax.tan(x), lambda b: math.tan(b), 1.0),
    "erf": ("erf({x})", lambda x: lax.erf(x), lambda b: 1.0, math.inf),
    "erf_inv": ("erf_inv(0.9 tanh({x}))", lambda x: lax.erf_inv(0.9 * lax.tanh(x)), lambda b: 1.2, math.inf),
    "square": ("{x}²", lambda x: lax.square(x), lambda b: b * b, 8.0),
    "stop_gradient": ("stop_gradient({x})", lambda x: lax.stop_gradient(x), lambda b: b, math.inf),
}  # fmt: skip

# Tame binary forms: (source template, function, result bound from the operand bounds,
# largest operand bound without a tanh first)
_BINARY: dict[str, tuple[str, Callable[[Any, Any], Any], Callable[[float, float], float], float]] = {
    "add": ("{x} + {y}", lambda x, y: x + y, lambda a, b: a + b, math.inf),
    "sub": ("{x} - {y}", lambda x, y: x - y, lambda a, b: a + b, math.inf),
    "mul": ("{x} * {y}", lambda x, y: x * y, lambda a, b: a * b, 8.0),
    "div": ("{x} / (1 + {y}²)", lambda x, y: x / (1 + y * y), lambda a, b: a, math.inf),
    "max": ("max({x}, {y})", lambda x, y: lax.max(x, y), max, math.inf),
    "min": ("min({x}, {y})", lambda x, y: lax.min(x, y), max, math.inf),
    "pow": ("(|{x}| + 1) ** tanh({y})", lambda x, y: lax.pow(lax.abs(x) + 1, lax.tanh(y)), lambda a, b: a + 1, 8.0),
    "rem": ("rem({x}, 1 + |{y}|)", lambda x, y: lax.rem(x, 1 + lax.abs(y)), lambda a, b: a, math.inf),
    "atan2": ("atan2({x}, {y})", lambda x, y: lax.atan2(x, y), lambda a, b: 3.2, math.inf),
}  # fmt: skip

_COMPARE = {"lt": lax.lt, "le": lax.le, "gt": lax.gt, "ge": lax.ge, "eq": lax.eq, "ne": lax.ne}


def _gen_unary(b: _Builder, name: str) -> None:
    template, fn, bound, limit = _UNARY[name]
    x = b.tame(b.pick(), limit)
    b.emit(template.format(x=f"v{x.id}"), x.shape, x.dtype, bound(x.bound),
           lambda env: fn(env[x.id]), [name])  # fmt: skip


def _gen_binary(b: _Builder, name: str) -> None:
    template, fn, bound, limit = _BINARY[name]
    x = b.tame(b.pick(), limit)
    if b.draw(hst.booleans()) and name not in ("atan2", "rem"):
        # A Python scalar operand: traced as a literal.
        c = b.draw(hst.sampled_from([0.5, 2.0, -1.5, 3.0]))
        b.emit(template.format(x=f"v{x.id}", y=repr(c)), x.shape, x.dtype, bound(x.bound, abs(c)),
               lambda env: fn(env[x.id], np.asarray(c, x.dtype)), [name, "literal"])  # fmt: skip
        return
    y, const = b.partner(x)
    if y is not None:
        y = b.tame(y, limit)
    yb = 1.5 if y is None else y.bound
    ops = [name] if y is not None else [name, "const"]
    b.emit(template.format(x=f"v{x.id}", y=_name(y, const)), x.shape, x.dtype, bound(x.bound, yb),
           lambda env: fn(env[x.id], _operand(env, y, const)), ops)  # fmt: skip


def _gen_integer_pow(b: _Builder) -> None:
    p = b.draw(hst.sampled_from([2, 3, -2]))
    x = b.tame(b.pick(), 4.0)
    if p < 0:
        b.emit(f"(1 + v{x.id}²) ** {p}", x.shape, x.dtype, 1.0,
               lambda env: lax.integer_pow(1 + env[x.id] * env[x.id], p), ["integer_pow"])  # fmt: skip
    else:
        b.emit(f"v{x.id} ** {p}", x.shape, x.dtype, x.bound**p,
               lambda env: lax.integer_pow(env[x.id], p), ["integer_pow"])  # fmt: skip


def _gen_select_n(b: _Builder) -> None:
    x = b.pick()
    cmp = b.draw(hst.sampled_from(sorted(_COMPARE)))
    y, const = b.partner(x)
    other = b.pick(lambda v: v.shape == x.shape and v.dtype == x.dtype)
    combine = b.draw(hst.sampled_from(["", "and", "or", "not"]))
    cmp_fn = _COMPARE[cmp]

    def apply(env: Env) -> Any:
        pred = cmp_fn(env[x.id], _operand(env, y, const))
        if combine == "and":
            pred = lax.bitwise_and(pred, lax.gt(env[x.id], np.asarray(0, x.dtype)))
        elif combine == "or":
            pred = lax.bitwise_or(pred, lax.is_finite(env[other.id]))
        elif combine == "not":
            pred = lax.bitwise_not(pred)
        return lax.select(pred, env[other.id], -env[x.id])

    text = f"{combine}({cmp}(v{x.id}, {_name(y, const)})) ? v{other.id} : -v{x.id}"
    ops = {"": [], "and": ["and", "gt"], "or": ["or", "is_finite"], "not": ["not"]}[combine]
    b.emit(f"select({text})", x.shape, x.dtype, max(x.bound, other.bound), apply,
           ["select_n", cmp, "neg", *ops])  # fmt: skip


def _gen_clamp(b: _Builder) -> None:
    x = b.pick()
    b.emit(f"clamp(-1.0, v{x.id}, 1.5)", x.shape, x.dtype, 1.5,
           lambda env: lax.clamp(np.asarray(-1.0, x.dtype), env[x.id], np.asarray(1.5, x.dtype)),
           ["clamp"])  # fmt: skip


def _gen_dot_general(b: _Builder) -> None:
    x = b.tame(b.need(lambda v: v.ndim >= 1, 2), 4.0)
    axes = list(range(x.ndim))
    n_contract = b.draw(hst.integers(1, min(2, x.ndim)))
    contract = b.draw(hst.permutations(axes))[:n_contract]
    rest = [a for a in axes if a not in contract]
    n_batch = b.draw(hst.integers(0, min(1, len(rest))))
    batch = rest[:n_batch]
    n_free = b.draw(hst.integers(0, max(0, min(2, b.max_rank + 1 - x.ndim))))
    free_sizes = [b.draw(hst.integers(1, b.max_dim)) for _ in range(n_free)]
    # The right operand's axes: batch, contracting and free ones in a random order.
    kinds = [("b", i) for i in range(n_batch)] + [("c", i) for i in range(n_contract)]
    kinds += [("f", i) for i in range(n_free)]
    order = b.draw(hst.permutations(kinds))
    y_shape = tuple(
        x.shape[batch[i]] if k == "b" else x.shape[contract[i]] if k == "c" else free_sizes[i]
        for k, i in order
    )
    rb = tuple(order.index(("b", i)) for i in range(n_batch))
    rc = tuple(order.index(("c", i)) for i in range(n_contract))
    dims = ((tuple(contract), rc), (tuple(batch), rb))
    y, const = b.partner(x, y_shape)
    if y is not None:
        y = b.tame(y, 4.0)
    k = math.prod(x.shape[i] for i in contract)
    out = [x.shape[i] for i in batch] + [x.shape[i] for i in rest[n_batch:]] + free_sizes
    yb = 1.5 if y is None else y.bound
    b.emit(f"dot_general(v{x.id}, {_name(y, const)}, {dims})", out, x.dtype, x.bound * yb * k,
           lambda env: lax.dot_general(env[x.id], _operand(env, y, const), dims),
           ["dot_general"] + ([] if y is not None else ["const"]))  # fmt: skip


_REDUCE = {"reduce_sum": lax.reduce_sum, "reduce_max": lax.reduce_max,
           "reduce_min": lax.reduce_min, "reduce_prod": lax.reduce_prod}  # fmt: skip


def _gen_reduce(b: _Builder, name: str) -> None:
    x = b.need(lambda v: v.ndim >= 1, 2)
    if name == "reduce_prod":
        x = b.tame(x, 1.0)
    axes = tuple(sorted(b.draw(hst.sets(hst.integers(0, x.ndim - 1), min_size=1))))
    out = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    n = math.prod(x.shape[i] for i in axes)
    bound = x.bound * n if name == "reduce_sum" else x.bound
    b.emit(f"{name}(v{x.id}, {axes})", out, x.dtype, bound,
           lambda env: _REDUCE[name](env[x.id], axes), [name])  # fmt: skip


def _gen_argmax(b: _Builder, name: str) -> None:
    x = b.need(lambda v: v.ndim >= 1, 2)
    axis = b.draw(hst.integers(0, x.ndim - 1))
    fn = lax.argmax if name == "argmax" else lax.argmin
    out = tuple(d for i, d in enumerate(x.shape) if i != axis)
    b.emit(f"float({name}(v{x.id}, {axis}))", out, x.dtype, x.shape[axis],
           lambda env: lax.convert_element_type(fn(env[x.id], axis, np.int32), x.dtype),
           [name, "convert_element_type"])  # fmt: skip


def _gen_broadcast_in_dim(b: _Builder) -> None:
    x = b.need(lambda v: v.ndim < b.max_rank, 1)
    pos = b.draw(hst.integers(0, x.ndim))
    new = b.draw(hst.integers(1, b.max_dim))
    shape = list(x.shape)
    # Size-1 axes may grow too, as in `jnp.broadcast_to`.
    shape = [b.draw(hst.integers(1, b.max_dim)) if d == 1 else d for d in shape]
    shape.insert(pos, new)
    dims = tuple(i if i < pos else i + 1 for i in range(x.ndim))
    b.emit(f"broadcast_in_dim(v{x.id}, {tuple(shape)}, {dims})", shape, x.dtype, x.bound,
           lambda env: lax.broadcast_in_dim(env[x.id], tuple(shape), dims),
           ["broadcast_in_dim"])  # fmt: skip


def _reshapes(size: int, max_rank: int) -> list[tuple[int, ...]]:
    out: set[tuple[int, ...]] = {(size,)}
    for a in range(1, size + 1):
        if size % a == 0:
            out.add((a, size // a))
            if max_rank >= 3:
                for c in range(1, size // a + 1):
                    if (size // a) % c == 0:
                        out.add((a, c, size // a // c))
    return sorted(out)


def _gen_reshape(b: _Builder) -> None:
    x = b.need(lambda v: v.ndim >= 1, 2)
    shape = b.draw(hst.sampled_from(_reshapes(math.prod(x.shape), b.max_rank)))
    b.emit(f"reshape(v{x.id}, {shape})", shape, x.dtype, x.bound,
           lambda env: lax.reshape(env[x.id], shape), ["reshape"])  # fmt: skip


def _gen_transpose(b: _Builder) -> None:
    x = b.need(lambda v: v.ndim >= 2, b.max_rank)
    perm = tuple(b.draw(hst.permutations(range(x.ndim))))
    b.emit(f"transpose(v{x.id}, {perm})", [x.shape[i] for i in perm], x.dtype, x.bound,
           lambda env: lax.transpose(env[x.id], perm), ["transpose"])  # fmt: skip


def _gen_squeeze(b: _Builder) -> None:
    x = b.need(lambda v: v.ndim < b.max_rank, 1)
    pos = b.draw(hst.integers(0, x.ndim))
    shape = (*x.shape[:pos], 1, *x.shape[pos:])
    e = b.emit(f"expand_dims(v{x.id}, {pos})", shape, x.dtype, x.bound,
               lambda env: lax.expand_dims(env[x.id], (pos,)), ["expand_dims"])  # fmt: skip
    y = b.tame(b.pick(lambda v: v.shape == shape and v.dtype == x.dtype), math.inf)
    b.emit(f"squeeze(exp(-v{y.id}²), {pos})", x.shape, x.dtype, 1.0,
           lambda env: lax.squeeze(lax.exp(-env[y.id] * env[y.id]), (pos,)),
           ["squeeze", "exp", "mul", "neg"])  # fmt: skip
    del e


def _gen_concatenate(b: _Builder) -> None:
    x = b.need(lambda v: v.ndim >= 1, 2)
    axis = b.draw(hst.integers(0, x.ndim - 1))
    size = b.draw(hst.integers(1, b.max_dim))
    shape = (*x.shape[:axis], size, *x.shape[axis + 1 :])
    y, const = b.partner(x, shape)
    out = (*x.shape[:axis], x.shape[axis] + size, *x.shape[axis + 1 :])
    b.emit(f"concatenate([v{x.id}, {_name(y, const)}], {axis})", out, x.dtype,
           max(x.bound, 2.0 if y is None else y.bound),
           lambda env: lax.concatenate([env[x.id], _operand(env, y, const)], axis),
           ["concatenate"])  # fmt: skip


def _gen_slice(b: _Builder) -> None:
    x = b.need(lambda v: v.ndim >= 1, 2)
    start, limit, strides = [], [], []
    for d in x.shape:
        s = b.draw(hst.integers(0, d - 1))
        start.append(s)
        limit.append(b.draw(hst.integers(s + 1, d)))
        strides.append(b.draw(hst.integers(1, 2)))
    start_t, limit_t, strides_t = tuple(start), tuple(limit), tuple(strides)
    out = tuple(-(-(lim - s) // st) for s, lim, st in zip(start, limit, strides))
    b.emit(f"slice(v{x.id}, {start_t}, {limit_t}, {strides_t})", out, x.dtype, x.bound,
           lambda env: lax.slice(env[x.id], start_t, limit_t, strides_t), ["slice"])  # fmt: skip


def _gen_dynamic_slice(b: _Builder) -> None:
    x = b.need(lambda v: v.ndim >= 1, 2)
    sizes = tuple(b.draw(hst.integers(1, d)) for d in x.shape)
    starts = [b.draw(hst.integers(0, d)) for d in x.shape]  # out of range is clamped
    # One start index may be computed from the data (an argmax), the rest are literals.
    dyn = b.draw(hst.sampled_from([None, *range(x.ndim)]))

    def apply(env: Env) -> Any:
        idx: list[Any] = list(starts)
        if dyn is not None:
            flat = lax.reshape(env[x.id], (math.prod(x.shape),))
            idx[dyn] = lax.argmax(flat, 0, np.int32)
        return lax.dynamic_slice(env[x.id], idx, sizes)

    shown = [f"argmax(v{x.id})" if i == dyn else str(s) for i, s in enumerate(starts)]
    b.emit(f"dynamic_slice(v{x.id}, [{', '.join(shown)}], {sizes})", sizes, x.dtype, x.bound,
           apply, ["dynamic_slice"] + (["argmax", "reshape"] if dyn is not None else []))  # fmt: skip


def _gen_gather(b: _Builder) -> None:
    x = b.need(lambda v: v.ndim >= 1, 2)
    axis = b.draw(hst.integers(0, x.ndim - 1))
    d = x.shape[axis]
    n = b.draw(hst.integers(1, 4))
    # Negative indices are valid numpy indexing; jnp wraps them.
    idx = np.asarray([b.draw(hst.integers(-d, d - 1)) for _ in range(n)], np.int32)
    key = (slice(None),) * axis + (idx,)
    out = (*x.shape[:axis], n, *x.shape[axis + 1 :])
    b.emit(f"v{x.id}[{', '.join([':'] * axis + [str(idx.tolist())])}]", out, x.dtype, x.bound,
           lambda env: env[x.id][key], ["gather"])  # fmt: skip


def _gen_convert_element_type(b: _Builder) -> None:
    x = b.pick()
    target = b.draw(hst.sampled_from(sorted({*b.dtypes, np.dtype(np.int32)}, key=str)))
    if target == np.int32:
        b.emit(f"float(int32(4 v{x.id}))", x.shape, x.dtype, 4 * x.bound + 1,
               lambda env: lax.convert_element_type(
                   lax.convert_element_type(env[x.id] * np.asarray(4, x.dtype), np.int32),
                   x.dtype), ["convert_element_type", "mul", "literal"])  # fmt: skip
        return
    b.emit(f"{target.name}(v{x.id})", x.shape, target, x.bound,
           lambda env: lax.convert_element_type(env[x.id], target),
           ["convert_element_type"])  # fmt: skip


def _gen_iota(b: _Builder) -> None:
    x = b.need(lambda v: v.ndim >= 1, 2)
    dim = b.draw(hst.integers(0, x.ndim - 1))
    b.emit(f"v{x.id} + 0.25 iota({x.shape}, {dim})", x.shape, x.dtype,
           x.bound + 0.25 * x.shape[dim],
           lambda env: env[x.id] + np.asarray(0.25, x.dtype)
           * lax.broadcasted_iota(x.dtype, x.shape, dim), ["iota", "add", "mul"])  # fmt: skip


_GENERATORS: dict[str, Callable[[_Builder], None]] = {
    **{name: (lambda n: lambda b: _gen_unary(b, n))(name) for name in _UNARY},
    **{name: (lambda n: lambda b: _gen_binary(b, n))(name) for name in _BINARY},
    **{name: (lambda n: lambda b: _gen_reduce(b, n))(name) for name in _REDUCE},
    "argmax": lambda b: _gen_argmax(b, "argmax"),
    "argmin": lambda b: _gen_argmax(b, "argmin"),
    "integer_pow": _gen_integer_pow,
    "select_n": _gen_select_n,
    "clamp": _gen_clamp,
    "dot_general": _gen_dot_general,
    "broadcast_in_dim": _gen_broadcast_in_dim,
    "reshape": _gen_reshape,
    "transpose": _gen_transpose,
    "squeeze": _gen_squeeze,
    "expand_dims": _gen_squeeze,
    "concatenate": _gen_concatenate,
    "slice": _gen_slice,
    "dynamic_slice": _gen_dynamic_slice,
    "gather": _gen_gather,
    "convert_element_type": _gen_convert_element_type,
    "iota": _gen_iota,
}

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(_GENERATORS))
"""The IR ops `programs` can generate (pass a subset as `ops=`)."""


def _finish(b: _Builder, n_outputs: int) -> tuple[Callable[..., Any], list[int]]:
    outputs = [b.pool[-1].id]
    for v in reversed(b.pool[:-1]):
        if len(outputs) >= n_outputs:
            break
        if v not in b.inputs:
            outputs.append(v.id)
    steps = list(b.steps)
    input_ids = [v.id for v in b.inputs]

    def fn(*args: Any) -> Any:
        env: Env = dict(zip(input_ids, args))
        for vid, apply in steps:
            env[vid] = apply(env)
        result = tuple(env[i] for i in outputs)
        return result[0] if len(result) == 1 else result

    return fn, outputs


def programs(
    max_ops: int = 6,
    ops: Sequence[str] | None = None,
    dtypes: Sequence[Any] = (jnp.float32,),
    *,
    max_rank: int = 3,
    max_dim: int = 4,
    max_outputs: int = 2,
) -> hst.SearchStrategy[ProgramCase]:
    """A hypothesis strategy of random, well-shaped, numerically tame tensor programs.

    **Arguments:**

    - `max_ops`: the most generated steps (a step is one IR op plus the few elementwise
      ops that keep it tame: `log(|x| + 1)` is one `log` step).
    - `ops`: the IR op names to draw steps from (default: all of `SUPPORTED_OPS`).
    - `dtypes`: floating-point dtypes for inputs and conversions (float64 needs x64).
    - `max_rank`, `max_dim`: bounds on the rank and on each dimension of every value.
    - `max_outputs`: the most outputs; with more than one, `fn` returns a tuple.

    **Returns:** a strategy of `ProgramCase`s.
    """
    names = SUPPORTED_OPS if ops is None else tuple(ops)
    unknown = sorted(set(names) - set(_GENERATORS))
    if unknown:
        raise ValueError(
            f"programs() cannot generate ops {unknown}; supported: {', '.join(SUPPORTED_OPS)}"
        )
    if max_rank < 2 or max_dim < 1:
        raise ValueError(
            f"programs() needs max_rank >= 2 and max_dim >= 1, got {max_rank}, {max_dim}"
        )
    dts = [np.dtype(d) for d in dtypes]
    if not dts or not all(np.issubdtype(d, np.floating) or d.name == "bfloat16" for d in dts):
        raise ValueError(f"programs() needs floating-point dtypes, got {list(dtypes)}")

    @hst.composite
    def build(draw: Any) -> ProgramCase:
        b = _Builder(draw, dts, max_rank, max_dim)
        for _ in range(draw(hst.integers(1, 2))):
            b.new_input(b.shape(), draw(hst.sampled_from(dts)))
        n_steps = draw(hst.integers(1, max(1, max_ops)))
        while len(b.steps) < n_steps:
            _GENERATORS[draw(hst.sampled_from(names))](b)
        fn, outputs = _finish(b, draw(hst.integers(1, max_outputs)))
        specs = tuple(jax.ShapeDtypeStruct(v.shape, v.dtype) for v in b.inputs)
        lines = [*b.lines, "return " + ", ".join(f"v{i}" for i in outputs)]
        fn.__name__ = "generated_program"
        seed = draw(hst.integers(0, 2**16))
        return ProgramCase(fn, specs, "\n".join(lines), seed, frozenset(b.used))

    return build()
