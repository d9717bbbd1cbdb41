"""Data-movement ops of the IR: broadcasts, reshapes, transposes, concatenation, slices
and gathers. They move or copy elements and do no arithmetic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from jax import lax

from ._errors import ShapeError
from ._node import Node, Params
from ._ops import _free, _movement_cost, _tuple, value_src
from ._registry import Cost, OpDef, register_op


def _broadcast_params(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "shape": _tuple(params["shape"]),
        "broadcast_dimensions": _tuple(params["broadcast_dimensions"]),
    }


def _broadcast_type(args: Sequence[Node], p: Params):
    (x,) = args
    shape, dims = p["shape"], p["broadcast_dimensions"]
    if len(dims) != x.ndim or any(
        d >= len(shape) or x.shape[i] not in (1, shape[d]) for i, d in enumerate(dims)
    ):
        raise ShapeError(f"cannot broadcast {x.shape} to {shape} along {dims}")
    return shape, x.dtype


register_op(
    OpDef(
        "broadcast_in_dim",
        "broadcast_in_dim",
        lambda x, *, shape, broadcast_dimensions: lax.broadcast_in_dim(
            x, shape, broadcast_dimensions
        ),
        lambda a, p: f"lax.broadcast_in_dim({a[0]}, {p['shape']}, {p['broadcast_dimensions']})",
        lambda node: Cost(0.0, 0.0, float(node.args[0].nbytes), float(node.nbytes)),
        type_rule=_broadcast_type,
        primitives=("broadcast_in_dim",),
        from_eqn=_broadcast_params,
    )
)


def _reshape_params(params: dict[str, Any]) -> dict[str, Any]:
    if params.get("dimensions") is not None:
        raise ShapeError("reshape with a dimensions permutation")
    return {"new_sizes": _tuple(params["new_sizes"])}


def _reshape_type(args: Sequence[Node], p: Params):
    (x,) = args
    if int(np.prod(p["new_sizes"], dtype=np.int64)) != x.size:
        raise ShapeError(f"cannot reshape {x.shape} to {p['new_sizes']}")
    return p["new_sizes"], x.dtype


register_op(
    OpDef(
        "reshape",
        "reshape",
        lambda x, *, new_sizes: lax.reshape(x, new_sizes),
        lambda a, p: f"lax.reshape({a[0]}, {p['new_sizes']})",
        _free,
        type_rule=_reshape_type,
        primitives=("reshape",),
        from_eqn=_reshape_params,
    )
)


def _transpose_type(args: Sequence[Node], p: Params):
    (x,) = args
    perm = p["permutation"]
    if sorted(perm) != list(range(x.ndim)):
        raise ShapeError(f"{perm} is not a permutation of the {x.ndim} axes of {x.shape}")
    return tuple(x.shape[i] for i in perm), x.dtype


register_op(
    OpDef(
        "transpose",
        "transpose",
        lambda x, *, permutation: lax.transpose(x, permutation),
        lambda a, p: f"lax.transpose({a[0]}, {p['permutation']})",
        _movement_cost,
        type_rule=_transpose_type,
        primitives=("transpose",),
        from_eqn=lambda p: {"permutation": _tuple(p["permutation"])},
    )
)


def _squeeze_type(args: Sequence[Node], p: Params):
    (x,) = args
    dims = p["dimensions"]
    if any(d >= x.ndim or x.shape[d] != 1 for d in dims):
        raise ShapeError(f"cannot squeeze dimensions {dims} of {x.shape}")
    return tuple(d for i, d in enumerate(x.shape) if i not in dims), x.dtype


def _expand_type(args: Sequence[Node], p: Params):
    (x,) = args
    shape = list(x.shape)
    for d in sorted(p["dimensions"]):
        if d > len(shape):
            raise ShapeError(f"cannot expand {x.shape} at {p['dimensions']}")
        shape.insert(d, 1)
    return tuple(shape), x.dtype


register_op(
    OpDef(
        "squeeze",
        "squeeze",
        lambda x, *, dimensions: lax.squeeze(x, dimensions),
        lambda a, p: f"lax.squeeze({a[0]}, {p['dimensions']})",
        _free,
        type_rule=_squeeze_type,
        primitives=("squeeze",),
        from_eqn=lambda p: {"dimensions": _tuple(p["dimensions"])},
    )
)
register_op(
    OpDef(
        "expand_dims",
        "squeeze",
        lambda x, *, dimensions: lax.expand_dims(x, dimensions),
        lambda a, p: f"lax.expand_dims({a[0]}, {p['dimensions']})",
        _free,
        type_rule=_expand_type,
    )
)


def _concat_type(args: Sequence[Node], p: Params):
    dim = p["dimension"]
    first = args[0]
    for a in args[1:]:
        if (
            a.ndim != first.ndim
            or a.dtype != first.dtype
            or any(a.shape[i] != first.shape[i] for i in range(a.ndim) if i != dim)
        ):
            raise ShapeError(f"cannot concatenate {[x.shape for x in args]} along {dim}")
    shape = list(first.shape)
    shape[dim] = sum(a.shape[dim] for a in args)
    return tuple(shape), first.dtype


register_op(
    OpDef(
        "concatenate",
        "concatenate",
        lambda *xs, dimension: lax.concatenate(xs, dimension),
        lambda a, p: f"lax.concatenate([{', '.join(a)}], {p['dimension']})",
        _movement_cost,
        type_rule=_concat_type,
        primitives=("concatenate",),
        from_eqn=lambda p: {"dimension": int(p["dimension"])},
    )
)


def _slice_params(params: dict[str, Any]) -> dict[str, Any]:
    start = _tuple(params["start_indices"])
    strides = params.get("strides")
    return {
        "start_indices": start,
        "limit_indices": _tuple(params["limit_indices"]),
        "strides": _tuple(strides) if strides is not None else (1,) * len(start),
    }


def _slice_type(args: Sequence[Node], p: Params):
    (x,) = args
    start, limit, strides = p["start_indices"], p["limit_indices"], p["strides"]
    if not (len(start) == len(limit) == len(strides) == x.ndim) or any(
        s < 0 or s > lim or lim > d or st < 1
        for s, lim, st, d in zip(start, limit, strides, x.shape)
    ):
        raise ShapeError(f"slice {start}:{limit}:{strides} out of range for {x.shape}")
    shape = tuple(max(0, -(-(lim - s) // st)) for s, lim, st in zip(start, limit, strides))
    return shape, x.dtype


register_op(
    OpDef(
        "slice",
        "slice",
        lambda x, *, start_indices, limit_indices, strides: lax.slice(
            x, start_indices, limit_indices, strides
        ),
        lambda a, p: (
            f"lax.slice({a[0]}, {p['start_indices']}, {p['limit_indices']}, {p['strides']})"
        ),
        lambda node: Cost(0.0, 0.0, float(node.nbytes), float(node.nbytes)),
        type_rule=_slice_type,
        primitives=("slice",),
        from_eqn=_slice_params,
    )
)


def _dynamic_slice_type(args: Sequence[Node], p: Params):
    x, *idx = args
    sizes = p["slice_sizes"]
    if len(idx) != x.ndim or len(sizes) != x.ndim or any(s > d for s, d in zip(sizes, x.shape)):
        raise ShapeError(f"dynamic_slice of size {sizes} out of range for {x.shape}")
    return sizes, x.dtype


register_op(
    OpDef(
        "dynamic_slice",
        "dynamic_slice",
        lambda x, *idx, slice_sizes: lax.dynamic_slice(x, idx, slice_sizes),
        lambda a, p: f"lax.dynamic_slice({a[0]}, [{', '.join(a[1:])}], {p['slice_sizes']})",
        lambda node: Cost(0.0, 0.0, float(node.nbytes), float(node.nbytes)),
        type_rule=_dynamic_slice_type,
        primitives=("dynamic_slice",),
        from_eqn=lambda p: {"slice_sizes": _tuple(p["slice_sizes"])},
    )
)


class GatherSpec:
    """Gather's static parameters, hashable and with a stable key."""

    __slots__ = ("dimension_numbers", "fill_value", "indices_are_sorted", "mode", "slice_sizes",
                 "unique_indices")  # fmt: skip

    def __init__(self, params: dict[str, Any]):
        self.dimension_numbers = params["dimension_numbers"]
        self.slice_sizes = _tuple(params["slice_sizes"])
        self.mode = params["mode"]
        self.fill_value = params.get("fill_value")
        self.indices_are_sorted = bool(params.get("indices_are_sorted", False))
        self.unique_indices = bool(params.get("unique_indices", False))

    def param_key(self) -> str:
        return (
            f"gather({self.dimension_numbers!r},{self.slice_sizes},{self.mode!r},"
            f"{self.fill_value!r},{self.indices_are_sorted},{self.unique_indices})"
        )

    def kwargs(self) -> dict[str, Any]:
        return {
            "dimension_numbers": self.dimension_numbers,
            "slice_sizes": self.slice_sizes,
            "mode": self.mode,
            "fill_value": self.fill_value,
            "indices_are_sorted": self.indices_are_sorted,
            "unique_indices": self.unique_indices,
        }

    def source(self) -> str:
        fill = "None" if self.fill_value is None else value_src(self.fill_value)
        return (
            f"dimension_numbers=lax.{self.dimension_numbers!r}, "
            f"slice_sizes={self.slice_sizes}, mode=lax.GatherScatterMode.{self.mode.name}, "
            f"fill_value={fill}, "
            f"indices_are_sorted={self.indices_are_sorted}, "
            f"unique_indices={self.unique_indices}"
        )


register_op(
    OpDef(
        "gather",
        "gather",
        lambda x, idx, *, spec: lax.gather(x, idx, **spec.kwargs()),
        lambda a, p: f"lax.gather({a[0]}, {a[1]}, {p['spec'].source()})",
        lambda node: Cost(0.0, 0.0, float(node.nbytes + node.args[1].nbytes), float(node.nbytes)),
        primitives=("gather",),
        from_eqn=lambda p: {"spec": GatherSpec(p)},
    )
)
