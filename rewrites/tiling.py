"""Tiling: one fused e-node per candidate tile size, all in one e-class.

Each tiled op is declared once in `TILED_OPS` (which parameter is the tile, and which
operand dimension it tiles). `retile` turns one fused node into its variants at every
candidate tile size, and `tile_rewrites` does that for every fusion fact, so that after
`rewrites.fusion.add_to_egraph` the e-class of the original subterm holds the fused op at
each tile size and tile-size selection is an extraction choice.

Candidate sizes are powers of two from `MIN_TILE` up to the dimension; the dimension
itself is always a candidate (one tile, no loop). Sizes that do not divide the dimension
are kept: the fused ops handle the remainder with one smaller last tile, so no size is
wrong, only slower or faster — which is the cost model's call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from superopt.ir import Node, make, toposort

from .fusion import Rewrite

MIN_TILE = 64


@dataclass(frozen=True)
class TiledOp:
    """A fused op's tile: the param name and which dimension of which operand it tiles."""

    param: str
    operand: int
    axis: int


TILED_OPS: dict[str, TiledOp] = {
    # chunk of the vocabulary: axis 1 of w [D, V]
    "chunked_xent": TiledOp("chunk", 1, 1),
    # block of keys: axis 1 of k [B, S, H, D]
    "flash_attention": TiledOp("block", 1, 1),
}


def tile_sizes(dim: int, minimum: int = MIN_TILE, maximum: int | None = None) -> tuple[int, ...]:
    """Candidate tile sizes for a dimension of size `dim`.

    **Arguments:**

    - `dim`: the size of the tiled dimension.
    - `minimum`: the smallest power of two to try.
    - `maximum`: the largest tile to try besides `dim` itself (default: no bound).

    **Returns:** increasing sizes: powers of two in `[minimum, dim)` (up to `maximum`),
    then `dim`.
    """
    sizes = []
    t = minimum
    while t < dim and (maximum is None or t <= maximum):
        sizes.append(t)
        t *= 2
    return (*sizes, dim)


def retile(node: Node, sizes: Sequence[int] | None = None) -> list[Node]:
    """The fused `node` at every candidate tile size (itself included if its size is one).

    **Arguments:**

    - `node`: a node whose op is in `TILED_OPS`.
    - `sizes`: the tile sizes to use; default `tile_sizes` of the tiled dimension.

    **Returns:** one node per size, equal in value to `node`.
    """
    spec = TILED_OPS[node.op]
    dim = node.args[spec.operand].shape[spec.axis]
    sizes = tile_sizes(dim) if sizes is None else sizes
    out = []
    for t in sizes:
        if node.params[spec.param] == t:
            out.append(node)
        else:
            params = dict(node.params)
            params[spec.param] = int(t)
            out.append(make(node.op, *node.args, **params))
    return out


def _built_by(rw: Rewrite) -> list[Node]:
    """The nodes of a fact's `after` term that the rule built (not nodes of the program)."""
    program = {id(n) for n in toposort(list(rw.before.args))}
    return [n for n in toposort([rw.after]) if id(n) not in program]


def tile_rewrites(rewrites: Sequence[Rewrite], sizes: Sequence[int] | None = None) -> list[Rewrite]:
    """Each fusion fact once per tile size; facts without a tiled op pass through.

    **Arguments:**

    - `rewrites`: facts from `rewrites.fusion.find_rewrites`.
    - `sizes`: tile sizes for every tiled op; default `tile_sizes` of each dimension.

    **Returns:** the facts, tiled ones expanded to one per size.
    """
    out: list[Rewrite] = []
    for rw in rewrites:
        # The one tiled node of the `after` term (the fused op, maybe under reshapes, a
        # negation or a select).
        built = _built_by(rw)
        tiled = [n for n in built if n.op in TILED_OPS]
        if len(tiled) != 1:
            out.append(rw)
            continue
        fused, ids = tiled[0], {id(n) for n in built}
        param = TILED_OPS[fused.op].param
        for variant in retile(fused, sizes):
            name = f"{rw.rule}[{param}={variant.params[param]}]"
            out.append(Rewrite(name, rw.before, _swap(rw.after, fused, variant, ids)))
    return out


def _swap(term: Node, old: Node, new: Node, built: set[int]) -> Node:
    """`term` with `old` replaced by `new`, rebuilding only the nodes in `built`."""
    if term is old:
        return new
    if id(term) not in built:
        return term
    args = tuple(_swap(a, old, new, built) for a in term.args)
    return Node(term.op, args, term.params, term.shape, term.dtype)
