"""The ops of the IR, one registry entry each (loops register families of them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from jax import lax

from ._errors import ShapeError
from ._node import Node, Params
from ._registry import Cost, OpDef, io_bytes, register_op


def dtype_src(dtype: Any) -> str:
    """Source text of a dtype, e.g. `jnp.float32`."""
    name = np.dtype(dtype).name
    return "jnp.bool_" if name == "bool" else f"jnp.{name}"


def value_src(value: Any) -> str:
    """Source text of a Python scalar that evaluates back to the same value."""
    if isinstance(value, (bool, np.bool_)):
        return repr(bool(value))
    if isinstance(value, (int, np.integer)):
        return repr(int(value))
    if isinstance(value, (complex, np.complexfloating)):
        value = complex(value)
        return f"complex({value_src(value.real)}, {value_src(value.imag)})"
    value = float(value)
    if math.isnan(value):
        return "float('nan')"
    if math.isinf(value):
        return "float('inf')" if value > 0 else "-float('inf')"
    return repr(value)


def _tuple(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _elementwise_cost(flops_per: float = 1.0, transcendental: bool = False):
    def cost(node: Node) -> Cost:
        read, written = io_bytes(node)
        n = float(node.size)
        return Cost(n * flops_per, n if transcendental else 0.0, read, written)

    return cost


def _free(node: Node) -> Cost:
    return Cost()


def _movement_cost(node: Node) -> Cost:
    read, written = io_bytes(node)
    return Cost(0.0, 0.0, read, written)


# ---------------------------------------------------------------- leaves


def _no_lower(*args: Any, **params: Any) -> Any:
    raise AssertionError("leaves are bound by codegen, not lowered")


register_op(OpDef("input", "leaf", _no_lower, lambda a, p: f"x{p['index']}", _free))
register_op(OpDef("const", "leaf", _no_lower, lambda a, p: f"consts[{p['key']!r}]", _free))
register_op(
    OpDef(
        "literal",
        "leaf",
        lambda *, value, dtype: np.asarray(value, dtype=dtype),
        lambda a, p: f"np.asarray({value_src(p['value'])}, {dtype_src(p['dtype'])})",
        _free,
        type_rule=lambda args, p: ((), np.dtype(p["dtype"])),
    )
)


def _iota_params(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "dtype": np.dtype(params["dtype"]),
        "shape": _tuple(params["shape"]),
        "dimension": int(params["dimension"]),
    }


register_op(
    OpDef(
        "iota",
        "leaf",
        lambda *, dtype, shape, dimension: lax.broadcasted_iota(dtype, shape, dimension),
        lambda a, p: (
            f"lax.broadcasted_iota({dtype_src(p['dtype'])}, {p['shape']}, {p['dimension']})"
        ),
        lambda node: Cost(0.0, 0.0, 0.0, float(node.nbytes)),
        type_rule=lambda args, p: (p["shape"], np.dtype(p["dtype"])),
        primitives=("iota",),
        from_eqn=_iota_params,
    )
)

# ---------------------------------------------------------------- elementwise


def _broadcast_shapes(args: Sequence[Node], name: str) -> tuple[int, ...]:
    # lax lets a rank-0 operand stand for any shape, and (since jax 0.10) a size-1
    # dimension stand for any size among operands of one rank; otherwise shapes agree.
    shapes = {a.shape for a in args if a.shape != ()}
    if len({len(s) for s in shapes}) > 1:
        raise ShapeError(f"{name} needs operands of one shape, got {sorted(shapes)}")
    if len(shapes) <= 1:
        return shapes.pop() if shapes else ()
    out = tuple(max(dims) for dims in zip(*shapes))
    if any(d not in (1, o) for s in shapes for d, o in zip(s, out)):
        raise ShapeError(f"{name} needs operands of one shape, got {sorted(shapes)}")
    return out


def _elementwise_type(result_dtype: str | None = None, *, first_operand: bool = False):
    def rule(args: Sequence[Node], p: Params):
        shape = _broadcast_shapes(args, "elementwise op")
        if result_dtype is not None:
            return shape, np.dtype(result_dtype)
        if first_operand:
            return shape, args[0].dtype
        # Rank-0 operands too: lax takes no mixed dtypes, and a rule that moves a scalar
        # onto an operand of another dtype (into a dot of bfloat16 by float32) would
        # otherwise build a program that fails to compile.
        dtypes = {a.dtype for a in args}
        if len(dtypes) > 1:
            raise ShapeError(f"elementwise operands of different dtypes: {dtypes}")
        return shape, dtypes.pop()

    return rule


_TRANSCENDENTAL = {
    "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sqrt", "rsqrt", "cbrt",
    "sin", "cos", "tan", "erf", "erf_inv", "atan2", "pow",
}  # fmt: skip

# (IR name, lax function name, result dtype if fixed)
UNARY_OPS: list[tuple[str, str, str | None]] = [
    ("neg", "neg", None), ("exp", "exp", None), ("exp2", "exp2", None),
    ("log", "log", None), ("log1p", "log1p", None), ("expm1", "expm1", None),
    ("tanh", "tanh", None), ("logistic", "logistic", None), ("sqrt", "sqrt", None),
    ("rsqrt", "rsqrt", None), ("cbrt", "cbrt", None), ("abs", "abs", None),
    ("sign", "sign", None), ("floor", "floor", None), ("ceil", "ceil", None),
    ("sin", "sin", None), ("cos", "cos", None), ("tan", "tan", None),
    ("erf", "erf", None), ("erf_inv", "erf_inv", None), ("square", "square", None),
    ("is_finite", "is_finite", "bool"), ("not", "bitwise_not", None),
    ("stop_gradient", "stop_gradient", None),
]  # fmt: skip

BINARY_OPS: list[tuple[str, str, str | None]] = [
    ("add", "add", None), ("sub", "sub", None), ("mul", "mul", None),
    ("div", "div", None), ("max", "max", None), ("min", "min", None),
    ("pow", "pow", None), ("rem", "rem", None), ("atan2", "atan2", None),
    ("and", "bitwise_and", None), ("or", "bitwise_or", None), ("xor", "bitwise_xor", None),
    ("eq", "eq", "bool"), ("ne", "ne", "bool"), ("lt", "lt", "bool"),
    ("le", "le", "bool"), ("gt", "gt", "bool"), ("ge", "ge", "bool"),
]  # fmt: skip

for _name, _fn, _dtype in UNARY_OPS:
    _lax_fn = getattr(lax, _fn)
    register_op(
        OpDef(
            _name,
            "unary",
            (lambda f: lambda x: f(x))(_lax_fn),
            (lambda f: lambda a, p: f"lax.{f}({a[0]})")(_fn),
            _elementwise_cost(1.0, _name in _TRANSCENDENTAL) if _name != "stop_gradient" else _free,
            type_rule=_elementwise_type(_dtype),
            primitives=(_name,),
            elementwise=True,
        )
    )

for _name, _fn, _dtype in BINARY_OPS:
    _lax_fn = getattr(lax, _fn)
    register_op(
        OpDef(
            _name,
            "binary",
            (lambda f: lambda x, y: f(x, y))(_lax_fn),
            (lambda f: lambda a, p: f"lax.{f}({a[0]}, {a[1]})")(_fn),
            _elementwise_cost(1.0, _name in _TRANSCENDENTAL),
            # lax.pow takes an integer exponent with a floating base.
            type_rule=_elementwise_type(_dtype, first_operand=_name == "pow"),
            primitives=(_name,),
            elementwise=True,
        )
    )

register_op(
    OpDef(
        "integer_pow",
        "integer_pow",
        lambda x, *, y: lax.integer_pow(x, y),
        lambda a, p: f"lax.integer_pow({a[0]}, {p['y']})",
        lambda node: _elementwise_cost(max(1.0, abs(node.params["y"]) - 1.0))(node),
        type_rule=_elementwise_type(),
        primitives=("integer_pow",),
        from_eqn=lambda p: {"y": int(p["y"])},
        elementwise=True,
    )
)


def _select_type(args: Sequence[Node], p: Params):
    pred, *cases = args
    shape = _broadcast_shapes(args, "select_n")
    dtypes = {c.dtype for c in cases}
    if len(dtypes) != 1:
        raise ShapeError(f"select_n cases of different dtypes: {dtypes}")
    if pred.dtype not in (np.dtype(bool), np.dtype(np.int32)):
        raise ShapeError(f"select_n predicate must be bool or int32, got {pred.dtype}")
    return shape, dtypes.pop()


register_op(
    OpDef(
        "select_n",
        "select_n",
        lambda *xs: lax.select_n(*xs),
        lambda a, p: f"lax.select_n({', '.join(a)})",
        _elementwise_cost(1.0),
        type_rule=_select_type,
        primitives=("select_n",),
        elementwise=True,
    )
)
register_op(
    OpDef(
        "clamp",
        "ternary",
        lambda lo, x, hi: lax.clamp(lo, x, hi),
        lambda a, p: f"lax.clamp({a[0]}, {a[1]}, {a[2]})",
        _elementwise_cost(2.0),
        type_rule=lambda args, p: (args[1].shape, args[1].dtype),
        primitives=("clamp",),
        elementwise=True,
    )
)


def _convert_params(params: dict[str, Any]) -> dict[str, Any]:
    return {"new_dtype": np.dtype(params["new_dtype"])}


register_op(
    OpDef(
        "convert_element_type",
        "convert",
        lambda x, *, new_dtype: lax.convert_element_type(x, new_dtype),
        lambda a, p: f"lax.convert_element_type({a[0]}, {dtype_src(p['new_dtype'])})",
        _elementwise_cost(1.0),
        type_rule=lambda args, p: (args[0].shape, np.dtype(p["new_dtype"])),
        primitives=("convert_element_type",),
        from_eqn=_convert_params,
        elementwise=True,
    )
)

# ---------------------------------------------------------------- dot_general


PRECISIONS = tuple(p.name for p in lax.Precision)  # "DEFAULT", "HIGH", "HIGHEST"


def dot_precision(precision: Any) -> tuple[str, str] | None:
    """The IR form of a `dot_general` precision.

    **Arguments:**

    - `precision`: what `lax.dot_general` takes or a jaxpr holds: `None`, a
      `lax.Precision`, its name, or a pair of those (one per operand).

    **Returns:** `None` for the default (`None`, `DEFAULT` or a pair of them), else the
    pair of `lax.Precision` names, e.g. `("HIGHEST", "HIGHEST")`: hashable, comparable,
    and plain data for the tuning cache.

    **Raises:** `ShapeError` for anything else (a `lax.DotAlgorithmPreset` or
    `lax.DotAlgorithm`): the IR cannot carry it faithfully, so such a dot stays opaque.
    """
    each = tuple(precision) if isinstance(precision, tuple | list) else (precision, precision)

    def name(p: Any) -> str | None:
        if p is None:
            return "DEFAULT"
        if isinstance(p, lax.Precision):
            return p.name
        if isinstance(p, str):
            # The IR's own names ("HIGHEST"), or lax's ("highest", "float32", ...).
            if p in PRECISIONS:
                return p
            try:
                return lax.Precision(p).name
            except ValueError:
                return None
        return None

    names = [name(p) for p in each]
    if len(names) != 2 or names[0] is None or names[1] is None:
        raise ShapeError(f"dot_general with precision {precision!r} is not modelled")
    return None if names == ["DEFAULT", "DEFAULT"] else (names[0], names[1])


def _lax_precision(precision: tuple[str, str] | None) -> Any:
    return None if precision is None else tuple(lax.Precision[n] for n in precision)


def _dot_params(params: dict[str, Any]) -> dict[str, Any]:
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    pref = params.get("preferred_element_type")
    return {
        "dimension_numbers": ((_tuple(lc), _tuple(rc)), (_tuple(lb), _tuple(rb))),
        "preferred_element_type": None if pref is None else np.dtype(pref),
        "precision": dot_precision(params.get("precision")),
    }


def _dot_type(args: Sequence[Node], p: Params):
    a, b = args
    (lc, rc), (lb, rb) = p["dimension_numbers"]
    if len(lc) != len(rc) or len(lb) != len(rb):
        raise ShapeError(f"dot_general dimension numbers do not pair up: {p['dimension_numbers']}")
    for i, j in [*zip(lc, rc), *zip(lb, rb)]:
        if i >= a.ndim or j >= b.ndim or a.shape[i] != b.shape[j]:
            raise ShapeError(
                f"dot_general of {a.shape} and {b.shape} with dimension numbers "
                f"{p['dimension_numbers']}: dimension {i} of the left operand does not "
                f"match dimension {j} of the right"
            )
    batch = [a.shape[i] for i in lb]
    free_a = [a.shape[i] for i in range(a.ndim) if i not in lc and i not in lb]
    free_b = [b.shape[j] for j in range(b.ndim) if j not in rc and j not in rb]
    if dot_precision(p.get("precision")) != p.get("precision"):
        raise ShapeError(
            f"dot_general precision {p.get('precision')!r} is not in the IR's form: "
            "None or a pair of lax.Precision names such as ('HIGHEST', 'HIGHEST')"
        )
    pref = p["preferred_element_type"]
    if pref is None and a.dtype != b.dtype:
        raise ShapeError(f"dot_general of {a.dtype} and {b.dtype} needs one dtype")
    return tuple(batch + free_a + free_b), np.dtype(pref) if pref is not None else a.dtype


def _dot_cost(node: Node) -> Cost:
    a = node.args[0]
    (lc, _), _ = node.params["dimension_numbers"]
    contracted = int(np.prod([a.shape[i] for i in lc], dtype=np.int64))
    read, written = io_bytes(node)
    return Cost(2.0 * node.size * contracted, 0.0, read, written)


def _dot_lower(
    a: Any, b: Any, *, dimension_numbers: Any, preferred_element_type: Any, precision: Any = None
) -> Any:
    return lax.dot_general(
        a,
        b,
        dimension_numbers,
        precision=_lax_precision(precision),
        preferred_element_type=preferred_element_type,
    )


def _dot_render(a: Sequence[str], p: Params) -> str:
    pref = p["preferred_element_type"]
    pref_src = "None" if pref is None else dtype_src(pref)
    precision = p.get("precision")
    # A default dot renders as it always has; an explicit precision is spelled out.
    prec_src = (
        "" if precision is None
        else ", precision=(" + ", ".join(f"lax.Precision.{n}" for n in precision) + ")"
    )  # fmt: skip
    return (
        f"lax.dot_general({a[0]}, {a[1]}, {p['dimension_numbers']}, "
        f"preferred_element_type={pref_src}{prec_src})"
    )


register_op(
    OpDef(
        "dot_general",
        "dot_general",
        _dot_lower,
        _dot_render,
        _dot_cost,
        type_rule=_dot_type,
        primitives=("dot_general",),
        from_eqn=_dot_params,
        # Rules and tests that build dots without naming a precision mean the default.
        defaults={"precision": None},
    )
)

# ---------------------------------------------------------------- reductions


def _axes_params(params: dict[str, Any]) -> dict[str, Any]:
    return {"axes": _tuple(params["axes"])}


def _reduce_type(args: Sequence[Node], p: Params):
    (x,) = args
    axes = p["axes"]
    if any(ax < 0 or ax >= x.ndim for ax in axes) or len(set(axes)) != len(axes):
        raise ShapeError(f"reduction axes {axes} out of range for shape {x.shape}")
    return tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype


def _reduce_cost(node: Node) -> Cost:
    read, written = io_bytes(node)
    return Cost(float(node.args[0].size), 0.0, read, written)


REDUCTIONS = ["reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or"]
for _name in REDUCTIONS:
    _lax_fn = getattr(lax, _name)
    register_op(
        OpDef(
            _name,
            "reduce",
            (lambda f: lambda x, *, axes: f(x, axes))(_lax_fn),
            (lambda n: lambda a, p: f"lax.{n}({a[0]}, {p['axes']})")(_name),
            _reduce_cost,
            type_rule=_reduce_type,
            primitives=(_name,),
            from_eqn=_axes_params,
        )
    )


def _argmax_params(params: dict[str, Any]) -> dict[str, Any]:
    return {"axes": _tuple(params["axes"]), "index_dtype": np.dtype(params["index_dtype"])}


def _argmax_type(args: Sequence[Node], p: Params):
    shape, _ = _reduce_type(args, p)
    return shape, np.dtype(p["index_dtype"])


for _name in ["argmax", "argmin"]:
    _lax_fn = getattr(lax, _name)
    register_op(
        OpDef(
            _name,
            "argreduce",
            (lambda f: lambda x, *, axes, index_dtype: f(x, axes[0], index_dtype))(_lax_fn),
            (
                lambda n: (
                    lambda a, p: f"lax.{n}({a[0]}, {p['axes'][0]}, {dtype_src(p['index_dtype'])})"
                )
            )(_name),
            _reduce_cost,
            type_rule=_argmax_type,
            primitives=(_name,),
            from_eqn=_argmax_params,
        )
    )

# ---------------------------------------------------------------- opaque


class OpaqueEqn:
    """A JAX equation the IR does not look inside: its primitive and params, verbatim."""

    __slots__ = ("multiple_results", "params", "primitive", "uid")
    _counter = 0

    def __init__(self, primitive: Any, params: dict[str, Any]):
        self.primitive = primitive
        self.params = dict(params)
        self.multiple_results = bool(primitive.multiple_results)
        OpaqueEqn._counter += 1
        self.uid = OpaqueEqn._counter

    def param_key(self) -> str:
        # Params can hold jaxprs and callables; identity is the only safe equality.
        return f"opaque#{self.uid}:{self.primitive.name}"

    def __call__(self, *args: Any) -> tuple[Any, ...]:
        # As `jax.core.eval_jaxpr` binds an equation: call primitives such as
        # `custom_vjp_call` take their bodies as functions, not as the jaxprs in params.
        out = self.primitive.bind(*args, **self.primitive.get_bind_params(self.params))
        return tuple(out) if self.multiple_results else (out,)


def _opaque_cost(node: Node) -> Cost:
    # `d.itemsize`, not `np.dtype(d)`: typed PRNG keys are not numpy dtypes.
    out = sum(float(np.prod(s, dtype=np.int64)) * d.itemsize
              for s, d in node.params["out_types"])  # fmt: skip
    return Cost(0.0, 0.0, float(sum(a.nbytes for a in node.args)), out)


register_op(
    OpDef(
        "opaque",
        "opaque",
        lambda *xs, eqn, out_types: eqn(*xs),
        lambda a, p: f"opaque[{p['eqn'].uid}]({', '.join(a)})",
        _opaque_cost,
        type_rule=lambda args, p: ((), None),
    )
)


def _tuple_get_type(args: Sequence[Node], p: Params):
    (x,) = args
    shape, dtype = x.params["out_types"][p["index"]]
    return shape, dtype


register_op(
    OpDef(
        "tuple_get",
        "tuple_get",
        lambda x, *, index: x[index],
        lambda a, p: f"{a[0]}[{p['index']}]",
        _free,
        type_rule=_tuple_get_type,
    )
)
