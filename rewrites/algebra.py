"""Algebra rules over `dot_general`: the rewrites that beat XLA on matmul-heavy code.

One egglog ruleset per rule, so that the search can name the rule behind every rewrite;
`RULES` maps names to rulesets and `EXPANSIVE` names the associative and distributive
family, which the search runs under a `back_off` scheduler. Each rule carries a one-line
comment with its side condition. Shapes are guaranteed by the typed constructors and the
`rank` facts; dtypes are checked again Python-side (an ill-typed e-node is never
extracted). No rule changes where NaN or Inf can appear beyond rounding: there is no
`exp(log x) -> x` or `x * 0 -> 0`.

JAX writes `A @ B` as `dot_general` with dimension numbers `(((1,),(0,)),((),()))`
(`MATMUL`, also for matrix @ vector), `v @ A` with `(((0,),(0,)),((),()))` (`VECMAT`), a
batched matmul as `(((2,),(1,)),((0,),(0,)))` (`BMM`), `2.0 * A` as `mul A 2.0:f32[]`,
`jnp.sum` as `reduce_sum[axes=(0, 1)]` and `A.T` as `transpose[permutation=(1, 0)]`.
A dot of 2-D operands that contracts other dimensions (`jnp.einsum("ij,kj->ik", x, w)`
is `(((1,),(1,)),((),()))`, `NT` here) is rewritten to a `MATMUL` of transposes
(`dot_transposed`), which the other rules then match.
"""

from __future__ import annotations

from egglog import Ruleset, String, Vec, birewrite, eq, i64, rewrite, ruleset

from superopt.ir._egraph import BMM, MATMUL, VECMAT, Tensor, dn_key, literal_key, rank


def _v(*xs: int) -> Vec[i64]:
    return Vec[i64](*[i64(x) for x in xs])


def _r(x: Tensor, k: int):
    return eq(rank(x)).to(i64(k))


SUM = "reduce_sum"
T2 = _v(1, 0)

# The other single contractions of 2-D operands, in BLAS terms (a^T b is VECMAT's string).
NT = dn_key((((1,), (1,)), ((), ())))  # a @ b^T
TT = dn_key((((0,), (1,)), ((), ())))  # a^T @ b^T; b @ x for 1-D x


# ---------------------------------------------------------------- associativity


@ruleset
def dot_assoc(a: Tensor, b: Tensor, c: Tensor, p: String):
    # (A@B)@C = A@(B@C); A, B 2-D, C of any rank >= 1 (covers matrix @ vector)
    yield birewrite(Tensor.dot(Tensor.dot(a, b, MATMUL, p), c, MATMUL, p)).to(
        Tensor.dot(a, Tensor.dot(b, c, MATMUL, p), MATMUL, p), _r(a, 2), _r(b, 2)
    )


@ruleset
def dot_assoc_vec(x: Tensor, a: Tensor, b: Tensor, p: String):
    # x@(A@B) = (x@A)@B; x 1-D, A, B 2-D
    yield birewrite(Tensor.dot(x, Tensor.dot(a, b, MATMUL, p), VECMAT, p)).to(
        Tensor.dot(Tensor.dot(x, a, VECMAT, p), b, VECMAT, p), _r(x, 1), _r(a, 2), _r(b, 2)
    )


@ruleset
def dot_assoc_batched(a: Tensor, b: Tensor, c: Tensor, p: String):
    # batched (A@B)@C = A@(B@C); all three 3-D with batch dimension 0
    yield birewrite(Tensor.dot(Tensor.dot(a, b, BMM, p), c, BMM, p)).to(
        Tensor.dot(a, Tensor.dot(b, c, BMM, p), BMM, p), _r(a, 3), _r(b, 3), _r(c, 3)
    )


# ---------------------------------------------------------------- distributivity


@ruleset
def dot_factor_left(a: Tensor, b: Tensor, c: Tensor, d: String, p: String):
    # A@B + A@C -> A@(B+C); same dimension numbers, so B and C have one shape
    for op in ("add", "sub"):
        yield rewrite(Tensor.binary(op, Tensor.dot(a, b, d, p), Tensor.dot(a, c, d, p))).to(
            Tensor.dot(a, Tensor.binary(op, b, c), d, p)
        )


@ruleset
def dot_factor_right(a: Tensor, b: Tensor, c: Tensor, d: String, p: String):
    # A@C + B@C -> (A+B)@C; same dimension numbers, so A and B have one shape
    for op in ("add", "sub"):
        yield rewrite(Tensor.binary(op, Tensor.dot(a, c, d, p), Tensor.dot(b, c, d, p))).to(
            Tensor.dot(Tensor.binary(op, a, b), c, d, p)
        )


@ruleset
def dot_expand(a: Tensor, b: Tensor, c: Tensor, d: String, p: String):
    # A@(B+C) -> A@B + A@C and (A+B)@C -> A@C + B@C; B and C of one rank (no scalar operand)
    for op in ("add", "sub"):
        yield rewrite(Tensor.dot(a, Tensor.binary(op, b, c), d, p)).to(
            Tensor.binary(op, Tensor.dot(a, b, d, p), Tensor.dot(a, c, d, p)),
            eq(rank(b)).to(rank(c)),
        )
        yield rewrite(Tensor.dot(Tensor.binary(op, a, b), c, d, p)).to(
            Tensor.binary(op, Tensor.dot(a, c, d, p), Tensor.dot(b, c, d, p)),
            eq(rank(a)).to(rank(b)),
        )


# ---------------------------------------------------------------- reductions through dots


@ruleset
def sum_of_dot(a: Tensor, b: Tensor, p: String):
    # sum(A@B) = sum(A, 0) @ sum(B, 1); A, B 2-D
    yield rewrite(Tensor.reduce(SUM, Tensor.dot(a, b, MATMUL, p), _v(0, 1))).to(
        Tensor.dot(Tensor.reduce(SUM, a, _v(0)), Tensor.reduce(SUM, b, _v(1)), VECMAT, p),
        _r(a, 2),
        _r(b, 2),
    )


@ruleset
def sum_rows_of_dot(a: Tensor, b: Tensor, p: String):
    # sum(A@B, 0) = sum(A, 0) @ B; A 2-D, B of any rank >= 1
    yield rewrite(Tensor.reduce(SUM, Tensor.dot(a, b, MATMUL, p), _v(0))).to(
        Tensor.dot(Tensor.reduce(SUM, a, _v(0)), b, VECMAT, p), _r(a, 2)
    )


@ruleset
def sum_cols_of_dot(a: Tensor, b: Tensor, p: String):
    # sum(A@B, 1) = A @ sum(B, 1); A, B 2-D
    yield rewrite(Tensor.reduce(SUM, Tensor.dot(a, b, MATMUL, p), _v(1))).to(
        Tensor.dot(a, Tensor.reduce(SUM, b, _v(1)), MATMUL, p), _r(a, 2), _r(b, 2)
    )


# ---------------------------------------------------------------- scalar multiplies


@ruleset
def scalar_out_of_dot(a: Tensor, b: Tensor, s: Tensor, d: String, p: String):
    # (s*A)@B = s*(A@B) = A@(s*B); s rank 0 (the cost picks the smallest side)
    yield rewrite(Tensor.dot(Tensor.binary("mul", a, s), b, d, p)).to(
        Tensor.binary("mul", Tensor.dot(a, b, d, p), s), _r(s, 0)
    )
    yield rewrite(Tensor.dot(Tensor.binary("mul", s, a), b, d, p)).to(
        Tensor.binary("mul", Tensor.dot(a, b, d, p), s), _r(s, 0)
    )
    yield rewrite(Tensor.dot(a, Tensor.binary("mul", b, s), d, p)).to(
        Tensor.binary("mul", Tensor.dot(a, b, d, p), s), _r(s, 0)
    )
    yield rewrite(Tensor.dot(a, Tensor.binary("mul", s, b), d, p)).to(
        Tensor.binary("mul", Tensor.dot(a, b, d, p), s), _r(s, 0)
    )


@ruleset
def scalar_into_dot(a: Tensor, b: Tensor, s: Tensor, d: String, p: String):
    # s*(A@B) -> (s*A)@B and A@(s*B); s rank 0
    for prod in (
        Tensor.binary("mul", Tensor.dot(a, b, d, p), s),
        Tensor.binary("mul", s, Tensor.dot(a, b, d, p)),
    ):
        yield rewrite(prod).to(Tensor.dot(Tensor.binary("mul", a, s), b, d, p), _r(s, 0))
        yield rewrite(prod).to(Tensor.dot(a, Tensor.binary("mul", b, s), d, p), _r(s, 0))


@ruleset
def unbroadcast_scalar(a: Tensor, s: Tensor, x: Tensor, q: String):
    # A * broadcast(s) = A * s; s rank 0 and A of the broadcast's rank (lax broadcasts rank 0)
    yield rewrite(Tensor.binary("mul", a, Tensor.broadcast(s, q))).to(
        Tensor.binary("mul", a, s), _r(s, 0), eq(rank(a)).to(rank(Tensor.broadcast(s, q)))
    )
    yield rewrite(Tensor.binary("mul", Tensor.broadcast(s, q), a)).to(
        Tensor.binary("mul", a, s), _r(s, 0), eq(rank(a)).to(rank(Tensor.broadcast(s, q)))
    )


# ---------------------------------------------------------------- transposes


@ruleset
def transpose_of_dot(a: Tensor, b: Tensor, p: String):
    # (A@B)^T = B^T @ A^T; A, B 2-D
    yield birewrite(Tensor.transpose(Tensor.dot(a, b, MATMUL, p), T2)).to(
        Tensor.dot(Tensor.transpose(b, T2), Tensor.transpose(a, T2), MATMUL, p),
        _r(a, 2),
        _r(b, 2),
    )


@ruleset
def dot_transposed(a: Tensor, b: Tensor, x: Tensor, p: String):
    # Every other single contraction of 2-D operands as a MATMUL of transposes, which the
    # rules above match. One way: backwards it would fold transposes into dots, which XLA
    # does itself, and grew the e-graph of an MLP's gradient 1.6x.
    # dot(a, b, VECMAT) = a^T @ b; a 2-D (for 1-D a it is a @ b, below), b of any rank
    yield rewrite(Tensor.dot(a, b, VECMAT, p)).to(
        Tensor.dot(Tensor.transpose(a, T2), b, MATMUL, p), _r(a, 2)
    )
    # dot(a, b, NT) = a @ b^T; a, b 2-D
    yield rewrite(Tensor.dot(a, b, NT, p)).to(
        Tensor.dot(a, Tensor.transpose(b, T2), MATMUL, p), _r(a, 2), _r(b, 2)
    )
    # dot(a, b, TT) = a^T @ b^T; a, b 2-D
    yield rewrite(Tensor.dot(a, b, TT, p)).to(
        Tensor.dot(Tensor.transpose(a, T2), Tensor.transpose(b, T2), MATMUL, p),
        _r(a, 2),
        _r(b, 2),
    )
    # dot(x, b, VECMAT) = x @ b = b^T @ x; x 1-D, b 2-D
    yield rewrite(Tensor.dot(x, b, VECMAT, p)).to(
        Tensor.dot(Tensor.transpose(b, T2), x, MATMUL, p), _r(x, 1), _r(b, 2)
    )
    # dot(x, b, TT) = b @ x; x 1-D, b 2-D
    yield rewrite(Tensor.dot(x, b, TT, p)).to(Tensor.dot(b, x, MATMUL, p), _r(x, 1), _r(b, 2))


_INVOLUTIONS = [(1, 0), (0, 2, 1), (1, 0, 2), (2, 1, 0), (0, 1, 3, 2), (0, 2, 1, 3)]


@ruleset
def transpose_transpose(a: Tensor):
    # (A^P)^P = A for a permutation P that is its own inverse, of A's rank
    for perm in _INVOLUTIONS:
        yield rewrite(Tensor.transpose(Tensor.transpose(a, _v(*perm)), _v(*perm))).to(
            a, _r(a, len(perm))
        )


# ---------------------------------------------------------------- neutral elements

_FLOATS = ("float32", "bfloat16", "float16", "float64")
_INTS = ("int32", "int64")


@ruleset
def mul_one(a: Tensor):
    # A * 1 = A; the literal has A's dtype (lax requires it) and rank 0, so A's shape stays
    for dt in _FLOATS + _INTS:
        one = Tensor.literal(literal_key(1, dt))
        yield rewrite(Tensor.binary("mul", a, one)).to(a)
        yield rewrite(Tensor.binary("mul", one, a)).to(a)


@ruleset
def add_zero(a: Tensor):
    # A + 0 = A (and A - 0); literal of A's dtype, rank 0. Only a -0.0 + 0.0 sign differs
    for dt in _FLOATS + _INTS:
        zero = Tensor.literal(literal_key(0, dt))
        yield rewrite(Tensor.binary("add", a, zero)).to(a)
        yield rewrite(Tensor.binary("add", zero, a)).to(a)
        yield rewrite(Tensor.binary("sub", a, zero)).to(a)


RULES: dict[str, Ruleset] = {
    "dot_assoc": dot_assoc,
    "dot_assoc_vec": dot_assoc_vec,
    "dot_assoc_batched": dot_assoc_batched,
    "dot_factor_left": dot_factor_left,
    "dot_factor_right": dot_factor_right,
    "dot_expand": dot_expand,
    "sum_of_dot": sum_of_dot,
    "sum_rows_of_dot": sum_rows_of_dot,
    "sum_cols_of_dot": sum_cols_of_dot,
    "scalar_out_of_dot": scalar_out_of_dot,
    "scalar_into_dot": scalar_into_dot,
    "unbroadcast_scalar": unbroadcast_scalar,
    "transpose_of_dot": transpose_of_dot,
    "dot_transposed": dot_transposed,
    "transpose_transpose": transpose_transpose,
    "mul_one": mul_one,
    "add_zero": add_zero,
}

# The families that grow the e-graph fastest: run under a back_off scheduler.
EXPANSIVE = frozenset(
    {"dot_assoc", "dot_assoc_vec", "dot_assoc_batched", "dot_expand", "transpose_of_dot"}
)
