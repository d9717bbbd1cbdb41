"""Tracing: a JAX function and example arguments to an IR `Program`.

`jax.make_jaxpr` gives the equations; nested `jit`/`pjit`/`closed_call` are inlined, and so
is the primal of a `custom_jvp_call`/`custom_vjp_call` whose rule JAX itself defines
(`jax.nn.relu`, `jax.nn.silu`, ...: their derivatives are those of the primal except at
isolated points). A rule defined anywhere else (the user's, a library's) stays an opaque
node that carries it, so that a rewritten program differentiates as the original does: a
straight-through estimator keeps its gradient. Every primitive the registry knows becomes an
IR node; anything else becomes an opaque node carrying its equation verbatim.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._errors import ShapeError, TraceError
from ._leaves import (
    StaticLeaf,
    describe,
    is_array_leaf,
    is_python_number,
    merge_leaves,
    merge_outputs,
    same_static,
    split_leaves,
    split_outputs,
)
from .ir import Node, OpaqueEqn, Params, Program, op_for_primitive

# Call-like primitives whose body is traced in place; the value is the params key
# holding the body.
_INLINE = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
}
# Of those, the ones that carry a differentiation rule: inlined only when JAX defines it.
_CUSTOM_RULES = {"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"}
_JAX_DIR = Path(jax.__file__).resolve().parent


def _rule_is_jaxs(body: Any) -> bool:
    """Whether the function under a custom rule is defined inside the `jax` package
    (its jaxpr's debug info reads like `relu at .../jax/_src/nn/functions.py:71`)."""
    jaxpr = body.jaxpr if isinstance(body, jcore.ClosedJaxpr) else body
    where = getattr(getattr(jaxpr, "debug_info", None), "func_src_info", None) or ""
    _, sep, location = where.rpartition(" at ")
    if not sep:
        return False
    try:
        return Path(location.rsplit(":", 1)[0]).resolve().is_relative_to(_JAX_DIR)
    except (OSError, ValueError):
        return False


# Said when tracing fails: what superopt did to the arguments that may be the cause.
_NOT_ARRAY_MSG = (
    "Superopt held {leaves} static (closed over, as eqx.filter_jit does), since a leaf that "
    "is not an array or a number is not traced. Pass arrays (or pytrees of arrays) where the "
    "function needs traced values, and mark other arguments static, e.g. "
    "`superopt.optimize(fn, x, 3, static_argnums=(1,))`."
)
_PYTHON_NUMBER_MSG = (
    "Python numbers are traced, as weakly typed arrays ({paths}), where eqx.filter_jit holds "
    "them static; superopt traced again with them held static, which failed too: if the "
    "function branches on one (an Equinox module's `inference` flag, say), pass its "
    "argument by static_argnums or bind it in a closure."
)
_HELD_NUMBERS_NOTE = (
    "Tracing the Python numbers among the arguments as arrays failed ({error}), so they are "
    "held static, as eqx.filter_jit holds them ({paths}): another value of one is another "
    "program (optimize again, or use @superopt.jit)"
)
_STATIC_LEAF_MSG = (
    "argument {path} is {got}, but the function was optimized for {want}. A leaf that is "
    "not an array or a number (a function, a string, ...) is held static: it is part of the "
    "optimized program, as under eqx.filter_jit. Call superopt.optimize again with the new "
    "value, or use @superopt.jit, which optimizes once per static value."
)
_STATIC_NUMBER_MSG = (
    "argument {path} is {got}, but the function was optimized for {want}. The function "
    "branches on the Python numbers among its arguments, so superopt held them static, as "
    "eqx.filter_jit does: each value is another program. Call superopt.optimize again with "
    "the new value, or use @superopt.jit, which optimizes once per value."
)


@dataclass(frozen=True, eq=False)
class ArgSpec:
    """The shape and dtype of one flattened argument, and whether it is weakly typed (a
    Python scalar, or a value computed from one: it takes the dtype of what it meets, so
    `2 * int8_array` is int8 where `jnp.int32(2) * int8_array` is int32)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    weak: bool = False

    @classmethod
    def of(cls, leaf: Any) -> ArgSpec:
        """The spec of an argument leaf (an array, a Python or numpy scalar, a tracer or a
        `jax.ShapeDtypeStruct`)."""
        try:
            weak = bool(jax.typeof(leaf).weak_type)
        except Exception:
            weak = False
        return cls(tuple(int(d) for d in np.shape(leaf)), _leaf_dtype(leaf), weak)

    def __repr__(self) -> str:
        name = getattr(self.dtype, "name", str(self.dtype))
        return f"{'weakly typed ' if self.weak else ''}{name}{list(self.shape)}"


@dataclass(frozen=True, eq=False)
class Traced:
    """A traced function: its program plus what it takes to call it like the original.

    **Arguments:**

    - `program`: the IR program over the flattened dynamic arguments.
    - `in_tree`: the pytree structure of the dynamic arguments.
    - `out_tree`: the pytree structure of the result.
    - `arg_specs`: shape and dtype of each array leaf (each input of the program).
    - `static_argnums`: positions of the static arguments.
    - `static_args`: their values, by position.
    - `static_leaves`: the leaves of the dynamic arguments that are held static (not
      arrays or numbers, see `superopt._leaves`), in the order of their positions among
      the leaves; the program's inputs are the other leaves.
    - `static_outputs`: the leaves of the result that are not arrays, `(position among
      the leaves, value)`, as the trace returned them; the program's outputs are the
      other leaves.
    - `hold_numbers`: whether the Python numbers among the dynamic arguments are held
      static too (then they are in `static_leaves`): tracing them as arrays failed.
    - `note`: why, for the report; `""` when they are traced.
    - `effects`: the primitives with side effects the function runs (`debug_print`,
      `io_callback`), which the program does not keep: a rewritten program would drop
      them, so `optimize` hands such a function back as it is.
    """

    program: Program
    in_tree: Any
    out_tree: Any
    arg_specs: tuple[ArgSpec, ...]
    static_argnums: tuple[int, ...]
    static_args: dict[int, Any]
    static_leaves: tuple[StaticLeaf, ...] = ()
    static_outputs: tuple[tuple[int, Any], ...] = ()
    hold_numbers: bool = False
    note: str = ""
    effects: tuple[str, ...] = ()

    def unflatten_outputs(self, arrays: Sequence[Any]) -> Any:
        """The result of a call, from the program's outputs and the static outputs."""
        if not self.static_outputs:
            return jax.tree_util.tree_unflatten(self.out_tree, list(arrays))
        return merge_outputs(self.out_tree, arrays, self.static_outputs)

    def jit_checked(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """`call`, a function of the original arguments that checks them (`flatten_args`),
        under `jax.jit` where `jax.jit` takes such arguments: then the check runs only when
        a call's signature is new to `jax.jit` (it traces again, and the check raises
        `SignatureError`), not on every call. Static leaves or outputs, or a static
        argument that does not hash, keep `call` as it is."""
        if self.static_leaves or self.static_outputs:
            return call
        try:
            for value in self.static_args.values():
                hash(value)
        except TypeError:
            return call
        checked = jax.jit(call, static_argnums=self.static_argnums)
        try:
            functools.update_wrapper(checked, call, updated=())
        except (AttributeError, TypeError):
            pass
        return checked

    @functools.cached_property
    def _array_positions(self) -> list[int]:
        static = {s.index for s in self.static_leaves}
        return [k for k in range(self.in_tree.num_leaves) if k not in static]

    def flatten_args(self, args: Sequence[Any]) -> list[Any]:
        """The array leaves of `args` (the program's inputs), checked against the traced
        signature: structure, static arguments, static leaves, shapes and dtypes."""
        from ._errors import SignatureError

        dynamic = [a for i, a in enumerate(args) if i not in self.static_args]
        for i, value in self.static_args.items():
            if i >= len(args) or not same_static(args[i], value):
                raise SignatureError(
                    f"static argument {i} differs from the one optimized for "
                    f"({describe(value)}); optimize again for a new static value"
                )
        leaves, tree = jax.tree_util.tree_flatten(dynamic)
        if tree != self.in_tree:
            raise SignatureError(
                f"arguments have structure {tree}, but the function was optimized for "
                f"{self.in_tree}"
            )
        if self.static_leaves:
            for static in self.static_leaves:
                got = leaves[static.index]
                # Identity first: the common call passes the very same model.
                if got is not static.value and not same_static(got, static.value):
                    number = self.hold_numbers and is_python_number(static.value)
                    msg = _STATIC_NUMBER_MSG if number else _STATIC_LEAF_MSG
                    want = describe(static.value)
                    raise SignatureError(msg.format(path=static.path, got=describe(got), want=want))
            leaves = [leaves[k] for k in self._array_positions]
        for k, (leaf, spec) in enumerate(zip(leaves, self.arg_specs)):
            # The common call: a concrete array of the traced type. Its shape, dtype and weak
            # typing are plain attributes; `ArgSpec.of` reads them through `jax.typeof` and
            # `result_type`, which cost several times a small jitted call.
            if (
                isinstance(leaf, jax.Array)
                and not isinstance(leaf, jax.core.Tracer)
                and leaf.shape == spec.shape
                and leaf.dtype == spec.dtype
                and getattr(leaf, "weak_type", None) == spec.weak  # typed keys have none
            ):
                continue
            if not is_array_leaf(leaf):
                raise SignatureError(
                    f"argument leaf {k} is {describe(leaf)}, but the function was optimized "
                    f"for an array {spec!r}; call superopt.optimize again for new arguments"
                )
            got = ArgSpec.of(leaf)
            if got.shape != spec.shape or got.dtype != spec.dtype or got.weak != spec.weak:
                weak = (
                    " (a Python scalar takes the dtype of the arrays it meets, a typed one "
                    "promotes them: the result's dtype can differ)"
                    if got.weak != spec.weak
                    else ""
                )
                raise SignatureError(
                    f"argument leaf {k} is {got!r}, but the function was optimized for "
                    f"{spec!r}{weak}; call superopt.optimize again for new shapes or "
                    "dtypes, or use @superopt.jit, which optimizes per signature"
                )
        return leaves


def _leaf_dtype(leaf: Any) -> np.dtype:
    dtype = jax.numpy.result_type(leaf)
    if _extended(dtype):
        return dtype
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _extended(dtype: Any) -> bool:
    return bool(jax.dtypes.issubdtype(dtype, jax.dtypes.extended))


def _dtype(dtype: Any) -> np.dtype:
    """A numpy dtype; JAX's extended dtypes (typed PRNG keys) are kept as they are, since
    numpy cannot represent them and only opaque nodes produce or consume them."""
    return dtype if _extended(dtype) else np.dtype(dtype)


class _Builder:
    """Converts jaxpr equations to nodes, sharing literals and constants."""

    def __init__(self) -> None:
        self.consts: dict[str, Any] = {}
        self._literals: dict[tuple[str, str], Node] = {}
        self._const_nodes: dict[str, Node] = {}

    def literal(self, value: Any, aval: Any) -> Node:
        dtype = np.dtype(aval.dtype)
        arr = np.asarray(value, dtype=dtype)
        if arr.shape != ():
            return self.const(arr)
        scalar = arr.item()
        key = (repr(scalar) + ("" if not isinstance(scalar, float) else str(np.signbit(arr))),
               dtype.name)  # fmt: skip
        node = self._literals.get(key)
        if node is None:
            node = Node("literal", (), Params(value=scalar, dtype=dtype), (), dtype)
            self._literals[key] = node
        return node

    def const(self, value: Any) -> Node:
        arr = np.asarray(value) if not isinstance(value, jax.Array) else value
        host = np.asarray(arr)
        digest = hashlib.sha1(host.tobytes())
        digest.update(f"{host.dtype}{host.shape}".encode())
        key = f"c{digest.hexdigest()[:16]}"
        node = self._const_nodes.get(key)
        if node is None:
            self.consts[key] = arr
            dtype = np.dtype(host.dtype)
            node = Node("const", (), Params(key=key), tuple(host.shape), dtype)
            self._const_nodes[key] = node
        return node

    def convert(self, jaxpr: Any, consts: Sequence[Any], args: Sequence[Node]) -> list[Node]:
        env: dict[Any, Node] = {}

        def read(v: Any) -> Node:
            if isinstance(v, jcore.Literal):
                return self.literal(v.val, v.aval)
            return env[v]

        for v, c in zip(jaxpr.constvars, consts):
            env[v] = self.const(c)
        for v, n in zip(jaxpr.invars, args):
            env[v] = n
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self.equation(eqn, ins)
            for v, n in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = n
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn: Any, ins: list[Node]) -> list[Node]:
        name = eqn.primitive.name
        body_key = _INLINE.get(name)
        if body_key is not None and body_key in eqn.params:
            body = eqn.params[body_key]
            if name in _CUSTOM_RULES and not _rule_is_jaxs(body):
                return self.opaque(eqn, ins)
            if isinstance(body, jcore.ClosedJaxpr):
                return self.convert(body.jaxpr, body.consts, ins)
            return self.convert(body, (), ins)
        opdef = op_for_primitive(name)
        typed = all(not _extended(v.aval.dtype) for v in (*eqn.invars, *eqn.outvars))
        if opdef is not None and len(eqn.outvars) == 1 and typed:
            try:
                raw = _default_algorithm(eqn) if name == "dot_general" else dict(eqn.params)
                params = opdef.from_eqn(raw) if opdef.from_eqn else {}
            except ShapeError:
                params = None  # a form of the primitive the IR does not model
            if params is not None:
                aval = eqn.outvars[0].aval
                shape = tuple(int(d) for d in aval.shape)
                return [Node(opdef.name, tuple(ins), Params(params), shape, np.dtype(aval.dtype))]
        return self.opaque(eqn, ins)

    def opaque(self, eqn: Any, ins: list[Node]) -> list[Node]:
        out_types = []
        for v in eqn.outvars:
            aval = v.aval
            if not hasattr(aval, "shape") or not hasattr(aval, "dtype"):
                raise TraceError(
                    f"equation `{eqn.primitive.name}` produces a {type(aval).__name__}, "
                    "which superopt cannot carry; it supports array-valued programs"
                )
            out_types.append((tuple(int(d) for d in aval.shape), _dtype(aval.dtype)))
        node = Node(
            "opaque",
            tuple(ins),
            Params(eqn=OpaqueEqn(eqn.primitive, eqn.params), out_types=tuple(out_types)),
            (),
            None,
        )
        return [
            Node("tuple_get", (node,), Params(index=i), shape, dtype)
            for i, (shape, dtype) in enumerate(out_types)
        ]


def static_positions(
    static_argnums: int | Sequence[int], nargs: int, fn: Callable[..., Any] | None = None
) -> tuple[int, ...]:
    """`static_argnums` as sorted non-negative positions among `nargs` arguments (negative
    ones count from the end, as in `jax.jit`). With `fn` a `jax.jit` function, its own
    static arguments (`static_argnums` and positional `static_argnames`) are added: JAX
    holds them static whatever superopt is told, so they cannot be traced as arrays.

    **Raises:** `TraceError` if one is out of range or not an integer."""
    if isinstance(static_argnums, int | np.integer):
        static_argnums = (static_argnums,)
    positions = set(jit_static_positions(fn, nargs)) if fn is not None else set()
    for i in static_argnums:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TraceError(f"static_argnums must be integers, got {i!r}")
        if not -nargs <= i < nargs:
            raise TraceError(f"static_argnums {i} is out of range for {nargs} arguments")
        positions.add(int(i) % nargs)
    return tuple(sorted(positions))


def jit_declared_statics(fn: Callable[..., Any]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The `static_argnums` and `static_argnames` a `jax.jit` function was made with (JAX
    completes each from the other through the signature); `((), ())` for any other
    callable, and for a `jax.jit` whose private record of them is not there."""
    try:
        info = fn._jit_info  # type: ignore[attr-defined]
        nums = tuple(int(i) for i in info.static_argnums)
        names = tuple(str(n) for n in info.static_argnames)
    except Exception:  # not a jax.jit function (the attribute is JAX's own)
        return (), ()
    return nums, names


def jit_static_positions(fn: Callable[..., Any], nargs: int) -> tuple[int, ...]:
    """The positions among `nargs` positional arguments that a `jax.jit` function holds
    static (`jit_declared_statics`)."""
    nums, _ = jit_declared_statics(fn)
    return tuple(sorted({i % nargs for i in nums if -nargs <= i < nargs}))


def trace(
    fn: Callable[..., Any],
    *args: Any,
    static_argnums: int | Sequence[int] = (),
) -> Traced:
    """Trace `fn(*args)` into an IR program.

    **Arguments:**

    - `fn`: a JAX-traceable function, plain or wrapped in `jax.jit`.
    - `*args`: example arguments: arrays, numbers or pytrees of them. Leaves that are
      neither (an Equinox model's activation function, a string) are held static, as
      `eqx.filter_jit` holds them: closed over, not inputs of the program. Python
      numbers are traced as weakly typed arrays; where that fails because the function
      branches on one (a `ConcretizationTypeError`), they are held static too
      (`Traced.hold_numbers`, and `Traced.note` says why).
    - `static_argnums`: positions of arguments that are Python values, not arrays. A
      `jax.jit` function's own static arguments are added to them.

    **Returns:** a `Traced` holding the program and the pytree structures. The leaves of
    the result that are not arrays are held static (`Traced.static_outputs`).
    """
    if not callable(fn):
        raise TraceError(f"superopt needs a callable to optimize, got {type(fn).__name__} {fn!r}")
    static_argnums = static_positions(static_argnums, len(args), fn)
    try:
        return _trace(fn, args, static_argnums, hold_numbers=False)
    except TraceError as err:
        failure = err
    # A function that branches on a Python number (a `Dropout`'s `inference` flag) cannot
    # trace it as an array: hold the numbers static, as eqx.filter_jit does, and try again.
    first = failure.__cause__
    concrete = isinstance(first, jax.errors.ConcretizationTypeError)
    paths = _number_paths(args, static_argnums) if concrete else []
    if not paths:
        raise failure
    try:
        traced = _trace(fn, args, static_argnums, hold_numbers=True)
    except TraceError:
        raise failure from first
    error = str(first).strip().splitlines()[0] if str(first).strip() else type(first).__name__
    note = _HELD_NUMBERS_NOTE.format(error=f"{type(first).__name__}: {error}",
                                     paths=", ".join(paths[:3]))  # fmt: skip
    return dataclasses.replace(traced, note=note)


def _trace(
    fn: Callable[..., Any], args: Sequence[Any], static_argnums: tuple[int, ...], hold_numbers: bool
) -> Traced:
    static_args, in_tree, arrays, static_leaves = split_arguments(
        args, static_argnums, hold_numbers
    )
    statics = [(s.index, s.value) for s in static_leaves]
    out_box: list[Any] = []

    def flat_fn(*flat: Any) -> list[Any]:
        dyn = iter(jax.tree_util.tree_unflatten(in_tree, merge_leaves(flat, statics)))
        full = [static_args[i] if i in static_args else next(dyn) for i in range(len(args))]
        out_arrays, out_tree, out_statics = split_outputs(fn(*full))
        out_box.append((out_tree, out_statics))
        return out_arrays

    try:
        closed = jax.make_jaxpr(flat_fn)(*arrays)
    except Exception as err:
        name = getattr(fn, "__name__", repr(fn))
        msg = f"tracing {name} with the example arguments failed: {err}"
        raise TraceError(_with_hints(msg, err, args, static_argnums, static_leaves)) from err
    builder = _Builder()
    specs = []
    inputs = []
    for i, v in enumerate(closed.jaxpr.invars):
        shape, dtype = tuple(int(d) for d in v.aval.shape), _dtype(v.aval.dtype)
        specs.append(ArgSpec(shape, dtype, bool(getattr(v.aval, "weak_type", False))))
        inputs.append(Node("input", (), Params(index=i), shape, dtype))
    outputs = builder.convert(closed.jaxpr, closed.consts, inputs)
    program = Program(tuple(inputs), tuple(outputs), builder.consts)
    out_tree, out_statics = out_box[-1]
    return Traced(
        program, in_tree, out_tree, tuple(specs), static_argnums, static_args, static_leaves,
        out_statics, hold_numbers, effects=_effectful(closed.jaxpr) if closed.effects else (),
    )  # fmt: skip


def _default_algorithm(eqn: Any) -> dict[str, Any]:
    """A `dot_general`'s params, with the algorithm `BF16_BF16_F32` on bfloat16 operands
    and a float32 result (what `jax.nn.dot_product_attention` asks for) read as the
    default precision: bfloat16 products accumulated in float32 is what the default dot of
    those operands computes. Any other algorithm stays, and the dot stays opaque."""
    params = dict(eqn.params)
    bf16 = all(v.aval.dtype == jnp.bfloat16 for v in eqn.invars)
    if (
        params.get("precision") == lax.DotAlgorithmPreset.BF16_BF16_F32
        and bf16
        and params.get("preferred_element_type") == jnp.float32
    ):
        params["precision"] = None
    return params


def _effectful(jaxpr: Any) -> tuple[str, ...]:
    """The names of the primitives with side effects in `jaxpr`, nested calls included."""
    names: set[str] = set()
    for eqn in jaxpr.eqns:
        if not eqn.effects:
            continue
        inner = list(jcore.jaxprs_in_params(eqn.params))
        if not inner:
            names.add(eqn.primitive.name)
        for sub in inner:
            names.update(_effectful(sub))
    return tuple(sorted(names))


def split_arguments(
    args: Sequence[Any], static_argnums: tuple[int, ...], hold_numbers: bool = False
) -> tuple[dict[int, Any], Any, list[Any], tuple[StaticLeaf, ...]]:
    """`args` taken apart as `trace` and `Traced` see them: the static arguments by
    position, the pytree structure of the others, their array leaves (the program's
    inputs) and their static leaves (`superopt._leaves`; Python numbers among them with
    `hold_numbers`)."""
    static_args = {i: args[i] for i in static_argnums if i < len(args)}
    dynamic = [a for i, a in enumerate(args) if i not in static_args]
    leaves, in_tree = jax.tree_util.tree_flatten(dynamic)
    arrays, statics = split_leaves(leaves, hold_numbers)
    static_leaves: tuple[StaticLeaf, ...] = ()
    if statics:
        paths = _leaf_paths(dynamic, [i for i in range(len(args)) if i not in static_args])
        static_leaves = tuple(StaticLeaf(k, paths[k], value) for k, value in statics)
    return static_args, in_tree, arrays, static_leaves


def _leaf_paths(dynamic: list[Any], positions: list[int]) -> list[str]:
    """Each leaf's path as the user wrote the call: `[0].activation`, where 0 is the
    argument's position among all the arguments, static ones included."""
    paths = []
    for path, _ in jax.tree_util.tree_flatten_with_path(dynamic)[0]:
        paths.append(f"[{positions[path[0].idx]}]{jax.tree_util.keystr(path[1:])}")
    return paths


def _with_hints(
    msg: str,
    err: Exception,
    args: Sequence[Any],
    static_argnums: tuple[int, ...],
    static_leaves: tuple[StaticLeaf, ...],
) -> str:
    """A tracing failure's message, with what superopt did to the arguments that may be
    the cause: leaves it held static, Python numbers it traced."""
    hints = []
    if static_leaves:
        named = [f"argument {s.path} ({type(s.value).__name__})" for s in static_leaves[:3]]
        more = f" and {len(static_leaves) - 3} more" if len(static_leaves) > 3 else ""
        hints.append(_NOT_ARRAY_MSG.format(leaves=", ".join(named) + more))
    if isinstance(err, jax.errors.ConcretizationTypeError):
        numbers = _number_paths(args, static_argnums)
        if numbers:
            hints.append(_PYTHON_NUMBER_MSG.format(paths=", ".join(numbers[:3])))
    return " ".join([msg, *hints])


def _number_paths(args: Sequence[Any], static_argnums: tuple[int, ...]) -> list[str]:
    """The paths of the Python numbers among the leaves of the dynamic arguments."""
    dynamic = [a for i, a in enumerate(args) if i not in static_argnums]
    positions = [i for i in range(len(args)) if i not in static_argnums]
    leaves = jax.tree_util.tree_leaves(dynamic)
    paths = _leaf_paths(dynamic, positions)
    return [p for p, leaf in zip(paths, leaves) if is_python_number(leaf)]
