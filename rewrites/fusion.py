"""Fusion rewrites: horizontal batching of dots, and vertical fusion into the fused ops.

Every rule here needs exact shapes in its side condition (the widths to slice back out,
that a mask is causal, that a broadcast is constant along the softmax axis), and the
e-graph sorts carry only ranks. So the rules are recognizers over the IR `Program`, each
declared as a `FusionRule` record (name, side condition, finder), and their matches go
into the e-graph as union facts (`add_to_egraph`): the matched node's e-class gains the
fused term, and tiling (`rewrites.tiling`) adds one fused e-node per tile size there.

Rules, with their side conditions:

- `batch_dots`: k >= 2 mutually independent `dot_general`s with equal operand shapes,
  dtypes, dimension numbers and precision -> stack the operands on a new axis 0, one dot
  with that axis as a batch dimension (and that precision), and a slice + reshape per
  original dot.
- `concat_shared_lhs`: k >= 2 matmuls (2-D, `x @ w`) with the same left operand, one
  precision and right operands of one dtype and depth -> one matmul (at that precision)
  on the right operands concatenated along columns, sliced back.
- `chunked_xent`: `logsumexp(L, -1) - L[i, labels[i]]` with `L = h @ w (+ b)` 2-D, the
  logsumexp in any stable spelling whose shift is constant along the vocabulary axis
  (optax, `jax.nn.logsumexp`), the label logit by gather (`take_along_axis`) ->
  `chunked_xent(h, w, labels[, b])`; needs a default-precision dot (the fused op computes
  at the default precision) with `L.dtype == h.dtype`, or that product in a wider float
  before the bias (`(h @ w).astype(float32)` of bfloat16 weights, or the product with
  `preferred_element_type=float32`, as mixed-precision training computes the loss) ->
  `chunked_xent(..., loss_dtype=float32)`. Also the one-hot form,
  `sum(one_hot(labels, V) * log_softmax(L), -1)` (optax's `softmax_cross_entropy` against
  `jax.nn.one_hot`, negated), in either log-softmax spelling -> `-chunked_xent(...)` where
  `0 <= labels < V`, and 0 elsewhere (an out-of-range label's one-hot row is all zeros).
- `flash_attention`: `softmax(scale · q kᵀ [masked]) v` with any layout that is a
  relabelling of `[B, T, H, D]` through transposes and unit-dim reshapes (what
  `jax.nn.dot_product_attention` traces to, and the 2-D or 3-D hand-written forms) ->
  `flash_attention(q, k, v[, mask])`; a constant mask equal to the lower triangle
  becomes `causal=True`; the masked fill must be a scalar; query, key and head sizes
  must be > 1 (a size-1 dimension carries no label, so its role is ambiguous); both dots
  of default precision (the fused op computes at the default precision).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from superopt.ir import Node, Program, ShapeError, make, toposort
from superopt.ir._fused import LARGE_NEGATIVE

from ._patterns import (
    MATMUL,
    ancestors,
    constant_along,
    depends_on_input,
    log_softmax_of,
    logsumexp_of,
    precision_of,
    scalar_value,
    softmax_of,
    strip,
)


@dataclass(frozen=True, eq=False)
class Rewrite:
    """One fact found by a rule: `before` equals `after`.

    **Arguments:**

    - `rule`: the rule's name.
    - `before`: a node of the program.
    - `after`: an equal node built over nodes of the program.
    """

    rule: str
    before: Node
    after: Node


@dataclass(frozen=True)
class FusionRule:
    """A fusion rule as data: its name, side condition and finder."""

    name: str
    condition: str
    find: Callable[[Program], list[Rewrite]]


# ---------------------------------------------------------------- horizontal


def _independent_groups(nodes: list[Node]) -> list[list[Node]]:
    """Split `nodes` greedily into groups where no node depends on another."""
    groups: list[tuple[list[Node], set[int]]] = []
    for n in nodes:
        anc = ancestors(n)
        for members, seen in groups:
            if id(n) not in seen and not any(id(m) in anc for m in members):
                members.append(n)
                seen |= anc
                break
        else:
            groups.append(([n], set(anc)))
    return [m for m, _ in groups if len(m) >= 2]


def _stack(xs: Sequence[Node]) -> Node:
    parts = [make("reshape", x, new_sizes=(1, *x.shape)) for x in xs]
    return make("concatenate", *parts, dimension=0)


def _unstack(x: Node, i: int) -> Node:
    shape = x.shape[1:]
    start = (i,) + (0,) * len(shape)
    limit = (i + 1, *shape)
    part = make("slice", x, start_indices=start, limit_indices=limit, strides=(1,) * x.ndim)
    return make("reshape", part, new_sizes=shape)


def find_batch_dots(program: Program) -> list[Rewrite]:
    """Independent same-shape dots -> one batched dot (stack, dot, unstack)."""
    buckets: dict[tuple[Any, ...], list[Node]] = {}
    for n in program.nodes():
        if n.op == "dot_general":
            a, b = n.args
            # The params key holds the dimension numbers, preferred type and precision.
            key = (a.shape, b.shape, a.dtype, b.dtype, n.params.key)
            buckets.setdefault(key, []).append(n)
    out: list[Rewrite] = []
    for dots in buckets.values():
        for group in _independent_groups(dots):
            (lc, rc), (lb, rb) = group[0].params["dimension_numbers"]

            def up(dims: tuple[int, ...]) -> tuple[int, ...]:
                return tuple(d + 1 for d in dims)

            dn = ((up(lc), up(rc)), ((0, *up(lb)), (0, *up(rb))))
            big = make(
                "dot_general",
                _stack([g.args[0] for g in group]),
                _stack([g.args[1] for g in group]),
                dimension_numbers=dn,
                preferred_element_type=group[0].params["preferred_element_type"],
                precision=precision_of(group[0]),
            )
            out += [Rewrite("batch_dots", g, _unstack(big, i)) for i, g in enumerate(group)]
    return out


def find_concat_shared_lhs(program: Program) -> list[Rewrite]:
    """`x @ w1, x @ w2, ...` -> `x @ concat(w1, w2, ...)` and column slices."""
    buckets: dict[tuple[int, str, Any, Any], list[Node]] = {}
    for n in program.nodes():
        if n.op == "dot_general" and n.params["dimension_numbers"] == MATMUL:
            a, b = n.args
            if a.ndim == 2 and b.ndim == 2:
                pref = n.params["preferred_element_type"]
                buckets.setdefault((id(a), str(pref), b.dtype, precision_of(n)), []).append(n)
    out: list[Rewrite] = []
    for dots in buckets.values():
        for group in _independent_groups(dots):
            x = group[0].args[0]
            pref = group[0].params["preferred_element_type"]
            w = make("concatenate", *[g.args[1] for g in group], dimension=1)
            big = make("dot_general", x, w, dimension_numbers=MATMUL,
                       preferred_element_type=pref, precision=precision_of(group[0]))  # fmt: skip
            col = 0
            for g in group:
                width = g.args[1].shape[1]
                part = make(
                    "slice",
                    big,
                    start_indices=(0, col),
                    limit_indices=(big.shape[0], col + width),
                    strides=(1, 1),
                )
                out.append(Rewrite("concat_shared_lhs", g, part))
                col += width
    return out


# ---------------------------------------------------------------- cross-entropy


def _labels_of(node: Node, logits: Node) -> Node | None:
    """The integer labels `[N]` if `node` is `logits[i, labels[i]]` read by a gather."""
    n = logits.shape[0]
    if node.op == "gather" and node.shape == (n,) and node.args[0].shape == (n, 1):
        # optax's trailing `[:, 0]`: a gather of column 0 of a [N, 1] result.
        if depends_on_input(node.args[1]) or node.args[1].size != 1:
            return None
        from superopt._codegen import evaluate  # a scalar index: evaluate it to be sure

        (col,) = evaluate(Program((), (node.args[1],), {}))
        if int(np.asarray(col).reshape(())) != 0:
            return None
        node = node.args[0]
    node = strip(node, ("squeeze", "reshape"))
    if node.op != "gather" or node.args[0] is not logits:
        return None
    dn = node.params["spec"].dimension_numbers
    if (
        tuple(dn.collapsed_slice_dims) != (1,)
        or tuple(dn.start_index_map) != (1,)
        or tuple(dn.operand_batching_dims) != (0,)
        or tuple(dn.offset_dims) != ()
    ):
        return None
    idx = strip(node.args[1], ("reshape",))
    if idx.op == "select_n":
        # Python-style wrap of negative labels; chunked_xent wraps them the same way.
        pred, keep, wrapped = idx.args
        if pred.op != "lt" or wrapped.op != "add" or keep not in wrapped.args:
            return None
        if logits.shape[1] not in [scalar_value(a) for a in wrapped.args]:
            return None
        idx = keep
    idx = strip(idx, ("broadcast_in_dim", "reshape"))
    if idx.shape != (n,) or not np.issubdtype(idx.dtype, np.integer):
        return None
    return idx


def _wider(low: Any, high: Any) -> bool:
    """Whether float dtype `high` is wider than float dtype `low`."""
    floats = jnp.issubdtype(low, jnp.floating) and jnp.issubdtype(high, jnp.floating)
    return bool(floats) and np.dtype(low).itemsize < np.dtype(high).itemsize


def _matmul_logits(logits: Node) -> tuple[Node, Node, Node | None, Any] | None:
    """`(h, w, bias, loss dtype)` of logits `h @ w (+ bias)`, the product possibly in a
    wider float than `h` and `w` before the bias (mixed precision: bfloat16 weights, a
    float32 loss), upcast or by `preferred_element_type`; the loss dtype is `None` where
    the product keeps `h`'s dtype."""
    bias = None
    if logits.op == "add":
        a, b = logits.args
        dot, bb = (b, a) if a.op == "broadcast_in_dim" else (a, b)
        if bb.op != "broadcast_in_dim" or bb.params["broadcast_dimensions"] != (1,):
            return None
        bias = bb.args[0]
        if bias.shape != (logits.shape[1],):
            return None
        logits = dot
    loss_dtype = None
    if logits.op == "convert_element_type" and _wider(logits.args[0].dtype, logits.dtype):
        logits, loss_dtype = logits.args[0], logits.dtype
    if logits.op != "dot_general" or logits.params["dimension_numbers"] != MATMUL:
        return None
    if precision_of(logits) is not None:
        return None  # the fused op computes at the default precision
    h, w = logits.args
    if h.ndim != 2 or w.ndim != 2 or h.dtype != w.dtype:
        return None
    if logits.dtype != h.dtype:
        if loss_dtype is not None or not _wider(h.dtype, logits.dtype):
            return None
        loss_dtype = logits.dtype  # preferred_element_type: accumulated and kept wide
    if bias is not None and bias.dtype != (h.dtype if loss_dtype is None else loss_dtype):
        return None
    return h, w, bias, loss_dtype


def _is_column_iota(node: Node, v: int) -> bool:
    """Whether `node` is `0, 1, ..., v-1` along the last axis of a 2-D array (constant along
    the first), as `jax.nn.one_hot` builds it."""
    if node.op == "broadcast_in_dim":
        inner = node.args[0]
        return (
            node.ndim == 2
            and node.params["broadcast_dimensions"] == (1,)
            and inner.op == "iota"
            and inner.shape == (v,)
        )
    return (
        node.op == "iota"
        and node.ndim == 2
        and node.shape[1] == v
        and node.params["dimension"] == 1
    )


def _one_hot_labels(node: Node, n: int, v: int) -> Node | None:
    """The integer labels `[N]` if `node` is `one_hot(labels, V)`: `labels[:, None] ==
    iota(V)` as a number (what `jax.nn.one_hot` traces to)."""
    eq = strip(node, ("convert_element_type",))
    if eq.op != "eq" or eq.shape != (n, v):
        return None
    for column, row in (eq.args, eq.args[::-1]):
        if not _is_column_iota(column, v) or not constant_along(row, (n, v), 1):
            continue
        labels = strip(row, ("broadcast_in_dim", "reshape"))
        if labels.shape == (n,) and np.issubdtype(labels.dtype, np.integer):
            return labels
    return None


def _xent_of(logits: Node, labels: Node, chunk: int) -> Node | None:
    """The `chunked_xent` term of the cross-entropy of `logits` against `labels`."""
    parts = _matmul_logits(logits)
    if parts is None:
        return None
    h, w, b, loss_dtype = parts
    args = (h, w, labels) if b is None else (h, w, labels, b)
    extra = {} if loss_dtype is None else {"loss_dtype": np.dtype(loss_dtype)}
    return make("chunked_xent", *args, chunk=chunk, **extra)


def _one_hot_xent(node: Node, chunk: int) -> Node | None:
    """For `sum(one_hot(labels) * log_softmax(h @ w (+ b)), -1)` (the negated
    cross-entropy), the equal `chunked_xent` term. A label outside `[0, V)` has an all-zero
    one-hot row, so its entry is 0: the fused term is selected only for labels in range."""
    if node.op != "reduce_sum" or node.ndim != 1 or node.params["axes"] != (1,):
        return None
    product = strip(node.args[0], ("convert_element_type",))  # low precision sums in float32
    if product.op != "mul" or product.ndim != 2:
        return None
    n, v = product.shape
    for one_hot, log_probs in (product.args, product.args[::-1]):
        labels = _one_hot_labels(one_hot, n, v)
        found = log_softmax_of(strip(log_probs, ("convert_element_type",)))
        if labels is None or found is None or found[1] != 1 or found[0].shape != (n, v):
            continue
        xent = _xent_of(found[0], labels, chunk)
        if xent is None:
            continue
        loss = make("neg", xent)
        if loss.dtype != node.dtype:
            loss = make("convert_element_type", loss, new_dtype=node.dtype)

        def bound(value: int) -> Node:
            return make("literal", value=value, dtype=labels.dtype)

        in_range = make("and", make("ge", labels, bound(0)), make("lt", labels, bound(v)))
        zero = make("literal", value=0, dtype=node.dtype)
        zeros = make("broadcast_in_dim", zero, shape=(n,), broadcast_dimensions=())
        return make("select_n", in_range, zeros, loss)
    return None


def find_chunked_xent(program: Program, chunk: int = 2048) -> list[Rewrite]:
    """Softmax cross-entropy over `h @ w (+ b)` -> `chunked_xent`: with the label logit
    gathered, or against one-hot labels."""
    out: list[Rewrite] = []
    for node in program.nodes():
        if node.op == "reduce_sum":
            fused = _one_hot_xent(node, chunk)
            if fused is not None:
                out.append(Rewrite("chunked_xent", node, fused))
            continue
        if node.op != "sub" or node.ndim != 1:
            continue
        lse = logsumexp_of(node.args[0])
        if lse is None or lse[1] != 1 or lse[0].ndim != 2:
            continue
        logits = lse[0]
        labels = _labels_of(node.args[1], logits)
        xent = None if labels is None else _xent_of(logits, labels, chunk)
        if xent is not None:
            out.append(Rewrite("chunked_xent", node, xent))
    return out


# ---------------------------------------------------------------- attention


def _relabel(chain: list[Node], labels: tuple[str, ...]) -> tuple[str, ...] | None:
    """Carry dimension labels up through transposes and unit-dim reshapes (bottom first)."""
    for n in chain:
        if n.op == "transpose":
            labels = tuple(labels[i] for i in n.params["permutation"])
        elif n.op in ("reshape", "squeeze", "expand_dims"):
            real = [lab for lab, d in zip(labels, n.args[0].shape) if d != 1]
            if [d for d in n.args[0].shape if d != 1] != [d for d in n.shape if d != 1]:
                return None
            it = iter(real)
            labels = tuple("1" if d == 1 else next(it) for d in n.shape)
        elif n.op == "convert_element_type":
            pass
        else:
            return None
    return labels


def _descend(node: Node, ops: tuple[str, ...]) -> tuple[Node, list[Node]]:
    """Strip `ops` from `node`; the base and the stripped chain, bottom first."""
    chain: list[Node] = []
    while node.op in ops and len(node.args) == 1:
        chain.append(node)
        node = node.args[0]
    return node, chain[::-1]


_MOVES = ("transpose", "reshape", "squeeze", "expand_dims")
_BASE_LABELS = {2: ("t", "d"), 3: ("b", "t", "d"), 4: ("b", "t", "n", "d")}


def _dot_labels(dot: Node, la: tuple[str, ...], lb: tuple[str, ...]) -> tuple[str, ...] | None:
    (lc, rc), (lbt, rbt) = dot.params["dimension_numbers"]
    if any(la[i] != lb[j] for i, j in [*zip(lc, rc), *zip(lbt, rbt)]):
        return None
    free_a = [la[i] for i in range(len(la)) if i not in lc and i not in lbt]
    free_b = [lb[j] for j in range(len(lb)) if j not in rc and j not in rbt]
    return tuple([la[i] for i in lbt] + free_a + free_b)


def _relabels(node: Node) -> bool:
    """Whether `node` moves its operand's labelled dimensions around without merging or
    splitting any: a transpose, a convert, or a reshape that adds or drops size-1
    dimensions. A reshape of `[B, T, H*D]` into `[B, T, H, D]` (a projection split into
    heads) does not: attention's operand starts there."""
    if node.op in ("transpose", "convert_element_type"):
        return True
    if node.op not in _MOVES:
        return False
    real = [d for d in node.shape if d != 1]
    return real == [d for d in node.args[0].shape if d != 1]


def _unmoved(node: Node) -> Node:
    while _relabels(node):
        node = node.args[0]
    return node


def _scaled_base(node: Node) -> tuple[Node, list[Node], float] | None:
    """Strip moves and scalar multiplies/divides; the base, the move chain, and the scale."""
    scale, chain = 1.0, []
    while True:
        if _relabels(node):
            chain.append(node)
            node = node.args[0]
        elif node.op in ("mul", "div") and scalar_value(node.args[1]) is not None:
            c = scalar_value(node.args[1])
            scale = scale * c if node.op == "mul" else scale / c
            node = node.args[0]
        elif node.op == "mul" and scalar_value(node.args[0]) is not None:
            scale *= scalar_value(node.args[0])
            node = node.args[1]
        else:
            return node, chain[::-1], scale


def _to_bthd(x: Node, labels: tuple[str, ...], last: str) -> Node | None:
    """Reshape/transpose a tensor labelled with a subset of `b, t|s, n, last` to 4-D."""
    order = ("b", "t" if "t" in labels else "s", "n", last)
    real = [lab for lab in labels if lab != "1"]
    if sorted(real) != sorted(set(real)) or not set(real) <= set(order):
        return None
    base = make("reshape", x, new_sizes=tuple(d for d in x.shape if d != 1)) if "1" in labels else x
    present = [lab for lab in order if lab in real]
    perm = tuple(real.index(lab) for lab in present)
    if perm != tuple(range(len(perm))):
        base = make("transpose", base, permutation=perm)
    full = tuple(base.shape[present.index(lab)] if lab in present else 1 for lab in order)
    return base if base.shape == full else make("reshape", base, new_sizes=full)


def _causal(mask: Node, memo: dict[int, bool]) -> bool:
    """Whether a constant mask is the lower triangle over its last two axes (evaluated
    once per mask node: `memo` maps node ids, for one pass over one program)."""
    if id(mask) in memo:
        return memo[id(mask)]
    memo[id(mask)] = result = _is_lower_triangle(mask)
    return result


def _is_lower_triangle(mask: Node) -> bool:
    if depends_on_input(mask) or mask.size > 2**26:
        return False
    from superopt._codegen import evaluate  # evaluating needs codegen's interpreter

    (value,) = evaluate(Program((), (mask,), {}))
    value = np.asarray(value).reshape(-1, *mask.shape[-2:])
    return bool((value == np.tril(np.ones(mask.shape[-2:], bool))).all())


def find_flash_attention(program: Program, block: int = 128) -> list[Rewrite]:
    """`softmax(scale · q kᵀ [masked]) v` in any relabelled layout -> `flash_attention`."""
    best: dict[int, tuple[int, Rewrite]] = {}
    causal_memo: dict[int, bool] = {}
    for node in program.nodes():
        d2, top = _descend(node, (*_MOVES, "convert_element_type"))
        if d2.op != "dot_general" or precision_of(d2) is not None:
            continue  # the fused op computes at the default precision
        try:
            found = _match_attention(d2, block, causal_memo)
        except ShapeError:
            found = None
        if found is None:
            continue
        fused, labels_d2, order = found
        labels = _relabel(top, labels_d2)
        if labels is None or [lab for lab in labels if lab != "1"] != order:
            continue
        if node.dtype != fused.dtype or node.size != fused.size:
            continue
        after = make("reshape", fused, new_sizes=node.shape)
        # One fact per attention: at the top of the layout chain above the output dot.
        if id(d2) not in best or best[id(d2)][0] < len(top):
            best[id(d2)] = (len(top), Rewrite("flash_attention", node, after))
    return [rw for _, rw in best.values()]


def _match_attention(d2: Node, block: int, causal_memo: dict[int, bool]):
    for p_side in (0, 1):
        p, v_side = d2.args[p_side], d2.args[1 - p_side]
        p, _ = _descend(p, ("convert_element_type",))
        sm = softmax_of(p)
        if sm is None:
            continue
        scores, axis = sm
        mask = fill = None
        mask_labels_node = None
        s_chain: list[Node] = []
        scale = 1.0
        while True:
            if scores.op in _MOVES or scores.op == "convert_element_type":
                s_chain.append(scores)
                scores = scores.args[0]
            elif scores.op in ("mul", "div") and scalar_value(scores.args[1]) is not None:
                c = scalar_value(scores.args[1])
                scale = scale * c if scores.op == "mul" else scale / c
                scores = scores.args[0]
            elif (
                scores.op == "select_n"
                and mask is None
                and scalar_value(scores.args[1]) is not None
            ):
                mask, fill = scores.args[0], scalar_value(scores.args[1])
                mask_labels_node = scores
                s_chain.append(scores)
                scores = scores.args[2]
            else:
                break
        s_chain = s_chain[::-1]
        if scores.op != "dot_general" or precision_of(scores) is not None:
            return None
        q_base, q_chain, q_scale = _scaled_base(scores.args[0])
        k_base, k_chain, k_scale = _scaled_base(scores.args[1])
        v_base, v_chain, _ = _scaled_base(v_side)
        if v_base is not _unmoved(v_side):
            return None  # a scaled value is not attention
        scale *= q_scale * k_scale
        if not (q_base.ndim == k_base.ndim == v_base.ndim) or q_base.ndim not in _BASE_LABELS:
            return None
        # Size-1 dimensions carry no label: reshapes may add or drop them freely.
        ql = _unit(_BASE_LABELS[q_base.ndim], q_base.shape)
        kl = _unit(
            tuple("s" if lab == "t" else lab for lab in _BASE_LABELS[q_base.ndim]), k_base.shape
        )
        vl = _unit(
            tuple({"t": "s", "d": "e"}.get(lab, lab) for lab in _BASE_LABELS[q_base.ndim]),
            v_base.shape,
        )
        la, lb, lv = _relabel(q_chain, ql), _relabel(k_chain, kl), _relabel(v_chain, vl)
        if la is None or lb is None or lv is None:
            return None
        ls = _dot_labels(scores, la, lb)
        if ls is None or "d" in ls:
            return None
        # Labels through the score chain; the select keeps them, the mask shares them.
        cur, mask_l = ls, None
        for n in s_chain:
            if n is mask_labels_node:
                mask_l = cur
                continue
            cur = _relabel([n], cur)
            if cur is None:
                return None
        if cur[axis] != "s":
            return None
        pair = (cur, lv) if p_side == 0 else (lv, cur)
        lo = _dot_labels(d2, *pair)
        if lo is None or "s" in lo or "d" in lo:
            return None
        order = [lab for lab in ("b", "t", "n", "e") if lab in lo]
        if any(set(x) - {"1"} != set(y) - {"1"} for x, y in ((la, ql), (lb, kl), (lv, vl))):
            return None
        if set(lo) - {"1"} != (set(ql) | set(vl)) - {"1", "d", "s"}:
            return None
        q4, k4, v4 = _to_bthd(q_base, ql, "d"), _to_bthd(k_base, kl, "d"), _to_bthd(v_base, vl, "e")
        if q4 is None or k4 is None or v4 is None or q4.dtype != k4.dtype != v4.dtype:
            return None
        args = [q4, k4, v4]
        causal = False
        if mask is not None:
            if mask.shape != mask_labels_node.shape:
                return None
            if _causal(mask, causal_memo) and mask_l[-2:] == ("t", "s"):
                causal = True
            else:
                m4 = _mask_bhts(mask, mask_l)
                if m4 is None:
                    return None
                args.append(m4)
        fused = make(
            "flash_attention",
            *args,
            block=block,
            scale=float(scale),
            causal=causal,
            mask_value=float(LARGE_NEGATIVE if fill is None else fill),
        )
        return fused, lo, order
    return None


def _unit(labels: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str, ...]:
    return tuple("1" if d == 1 else lab for lab, d in zip(labels, shape))


def _mask_bhts(mask: Node, labels: tuple[str, ...]) -> Node | None:
    real = [lab for lab in labels if lab != "1"]
    if not {"t", "s"} <= set(real) or not set(real) <= {"b", "n", "t", "s"}:
        return None
    base = make("reshape", mask, new_sizes=tuple(d for d in mask.shape if d != 1))
    order = [lab for lab in ("b", "n", "t", "s") if lab in real]
    perm = tuple(real.index(lab) for lab in order)
    if perm != tuple(range(len(perm))):
        base = make("transpose", base, permutation=perm)
    full = tuple(base.shape[order.index(lab)] if lab in order else 1 for lab in "bnts")
    return make("reshape", base, new_sizes=full)


# ---------------------------------------------------------------- the rules as data

RULES: tuple[FusionRule, ...] = (
    FusionRule("batch_dots", "independent dots, equal shapes/dtypes/dims", find_batch_dots),
    FusionRule("concat_shared_lhs", "2-D matmuls sharing the left operand", find_concat_shared_lhs),
    FusionRule(
        "chunked_xent", "logsumexp(h@w) - label logit (gathered or one-hot)", find_chunked_xent
    ),
    FusionRule("flash_attention", "softmax(scale q k^T) v, any layout", find_flash_attention),
)


def find_rewrites(program: Program, rules: Sequence[FusionRule] = RULES) -> list[Rewrite]:
    """Every fusion fact the rules find in `program`.

    **Arguments:**

    - `program`: the IR program.
    - `rules`: the fusion rules to run (default: all of `RULES`).

    **Returns:** the `Rewrite`s, each `before` a node of `program`.
    """
    return [rw for r in rules for rw in r.find(program)]


def apply(program: Program, rewrites: Sequence[Rewrite]) -> Program:
    """The program with each `before` replaced by its `after` (for non-overlapping rewrites).

    **Arguments:**

    - `program`: the IR program the rewrites were found in.
    - `rewrites`: facts from `find_rewrites` (at most one per `before`).

    **Returns:** the rewritten `Program`, with the same inputs and constants.
    """
    subst = {id(rw.before): rw.after for rw in rewrites}
    built: dict[int, Node] = {}
    roots = list(program.inputs) + list(program.outputs)
    for node in toposort(roots + [rw.after for rw in rewrites]):
        src = subst.get(id(node), node)
        if src is not node:
            # `after` precedes `before` only if `after` is built from `before`'s operands.
            for n in toposort([src]):
                if id(n) not in built:
                    built[id(n)] = _rebuild(n, built)
            built[id(node)] = built[id(src)]
        elif id(node) not in built:
            built[id(node)] = _rebuild(node, built)
    outputs = tuple(built[id(o)] for o in program.outputs)
    return Program(program.inputs, outputs, program.consts)


def _rebuild(node: Node, built: dict[int, Node]) -> Node:
    args = tuple(built[id(a)] for a in node.args)
    if all(a is b for a, b in zip(args, node.args)):
        return node
    return Node(node.op, args, node.params, node.shape, node.dtype)


def add_to_egraph(egraph: Any, rewrites: Sequence[Rewrite]) -> int:
    """Union each rewrite's `before` with its `after` in an e-graph made by `encode`.

    Terms are added as shallow lets, one per node, so shared subterms are not re-walked;
    a node already in the e-graph lands in its own e-class by hash-consing.

    **Arguments:**

    - `egraph`: the `egglog.EGraph` the program was encoded into.
    - `rewrites`: the facts to add (tiling variants of one `before` all join its e-class).

    **Returns:** how many union facts were added.
    """
    from egglog import i64, set_, union

    from superopt.ir._egraph import _encode_node, rank

    terms: dict[int, Any] = {}
    actions = []
    for rw in rewrites:
        for n in toposort([rw.before, rw.after]):
            if id(n) in terms:
                continue
            name = f"fz{next(_LET_COUNTER)}"
            term = egraph.let(name, _encode_node(n, [terms[id(a)] for a in n.args]))
            terms[id(n)] = term
            if n.dtype is not None:
                actions.append(set_(rank(term)).to(i64(n.ndim)))
        actions.append(union(terms[id(rw.before)]).with_(terms[id(rw.after)]))
    if actions:
        egraph.register(*actions)
    return len(rewrites)


# Let names must be unique within an e-graph; a process-wide counter keeps them so.
_LET_COUNTER = itertools.count()
