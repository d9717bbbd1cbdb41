"""Structural matchers shared by the fusion rules: small questions about IR nodes (is this a
scalar literal, is it constant along an axis, is this a stable logsumexp, a log-softmax or a
softmax)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from superopt.ir import Node, Program, toposort

MATMUL = (((1,), (0,)), ((), ()))


def precision_of(dot: Node) -> tuple[str, str] | None:
    # A dot whose params name no precision (built with `Node(...)`, not `make`) is default.
    return dot.params.get("precision")


def strip(node: Node, ops: Iterable[str]) -> Node:
    ops = set(ops)
    while node.op in ops and len(node.args) == 1:
        node = node.args[0]
    return node


def scalar_value(node: Node) -> float | None:
    """The value of a scalar literal, possibly broadcast; `None` if not one."""
    node = strip(node, ("broadcast_in_dim", "reshape", "convert_element_type"))
    if node.op == "literal":
        return float(node.params["value"])
    if node.shape == () and len(toposort([node])) <= 8 and not depends_on_input(node):
        from superopt._codegen import evaluate  # a folded constant such as `sqrt(8.0)`

        return float(np.asarray(evaluate(Program((), (node,), {}))[0]))
    return None


def depends_on_input(node: Node) -> bool:
    return any(n.op == "input" for n in toposort([node]))


def ancestors(node: Node) -> set[int]:
    return {id(n) for n in toposort([node])} - {id(node)}


def constant_along(node: Node, target_shape: tuple[int, ...], axis: int) -> bool:
    """Whether `node`, broadcast against a tensor of `target_shape`, is constant on `axis`."""
    if node.shape == ():
        return True
    if node.op == "broadcast_in_dim" and axis not in node.params["broadcast_dimensions"]:
        return True
    return len(node.shape) == len(target_shape) and node.shape[axis] == 1 != target_shape[axis]


def shift_base(node: Node) -> Node:
    return strip(node, ("stop_gradient", "broadcast_in_dim", "reshape"))


def logsumexp_of(node: Node) -> tuple[Node, int] | None:
    """`(L, axis)` if `node` is a shifted logsumexp of `L` over one axis."""
    if node.op != "add":
        return None
    for log_side, shift in (node.args, node.args[::-1]):
        inner = strip(log_side, ())
        if inner.op != "log":
            continue
        # Low-precision sums accumulate in float32 between two converts; `keepdims` adds
        # a broadcast.
        total = strip(inner.args[0], ("abs", "convert_element_type", "broadcast_in_dim", "reshape"))
        if total.op != "reduce_sum" or len(total.params["axes"]) != 1:
            continue
        axis = total.params["axes"][0]
        e = strip(total.args[0], ("convert_element_type",))
        if e.op != "exp" or e.args[0].op != "sub":
            continue
        logits, sub_shift = e.args[0].args
        if shift_base(sub_shift) is not shift_base(shift):
            continue
        if not constant_along(sub_shift, logits.shape, axis):
            continue
        return logits, axis
    return None


def softmax_of(node: Node) -> tuple[Node, int] | None:
    """`(S, axis)` if `node` is `exp(S - c) / sum(exp(S - c), axis)` with `c` constant on it."""
    if node.op != "div":
        return None
    num, den = node.args
    total = strip(den, ("broadcast_in_dim", "reshape", "convert_element_type"))
    if total.op != "reduce_sum" or len(total.params["axes"]) != 1:
        return None
    if strip(total.args[0], ("convert_element_type",)) is not num:
        return None
    axis = total.params["axes"][0]
    if not constant_along(den, num.shape, axis) or num.op != "exp":
        return None
    arg = num.args[0]
    if arg.op == "sub":
        scores, shift = arg.args
        return (scores, axis) if constant_along(shift, scores.shape, axis) else None
    return arg, axis


def log_softmax_of(node: Node) -> tuple[Node, int] | None:
    """`(L, axis)` if `node` is a stable log-softmax of `L` over one axis: `(L - c) -
    log(sum(exp(L - c), axis))` (what `jax.nn.log_softmax` traces to) or `L -
    logsumexp(L, axis)`, with `c` constant along the axis."""
    if node.op != "sub":
        return None
    shifted, norm = node.args
    inner = strip(norm, ("broadcast_in_dim", "reshape"))
    lse = logsumexp_of(inner)
    if lse is not None and lse[0] is shifted:
        logits, axis = lse
        return (logits, axis) if constant_along(norm, logits.shape, axis) else None
    if inner.op != "log" or shifted.op != "sub":
        return None
    total = strip(inner.args[0], ("abs", "convert_element_type", "broadcast_in_dim", "reshape"))
    if total.op != "reduce_sum" or len(total.params["axes"]) != 1:
        return None
    axis = total.params["axes"][0]
    e = strip(total.args[0], ("convert_element_type",))
    if e.op != "exp" or e.args[0] is not shifted:
        return None
    logits, shift = shifted.args
    if not (constant_along(shift, logits.shape, axis) and constant_along(norm, logits.shape, axis)):
        return None
    return logits, axis
