"""Codegen: an IR `Program` back to a plain JAX function, and its readable source.

The callable *is* the rendered source, compiled: what `Optimized.source` shows is exactly
what runs. Every op lowers to a `lax` call, so the result can be jitted, differentiated and
vmapped like any JAX function.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from .ir import Node, Program, get_op
from .ir import _fused as fused

_counter = itertools.count()


def render(program: Program, name: str = "optimized") -> str:
    """The program as Python source of a function `name(x0, x1, ...) -> tuple`."""
    names: dict[int, str] = {}
    lines: list[str] = []
    params = ", ".join(f"x{i}" for i in range(len(program.inputs)))
    lines.append(f"def {name}({params}):")
    counter = 0
    for node in program.nodes():
        opdef = get_op(node.op)
        expr = opdef.render([names[id(a)] for a in node.args], node.params)
        if node.op in ("input", "literal", "const"):
            names[id(node)] = expr  # leaves are inlined where they are used
            continue
        var = f"v{counter}"
        counter += 1
        names[id(node)] = var
        lines.append(f"    {var} = {expr}")
    outs = "".join(f"{names[id(o)]}, " for o in program.outputs)
    lines.append(f"    return ({outs})")
    return "\n".join(lines) + "\n"


def namespace(program: Program) -> dict[str, Any]:
    """The globals the rendered source refers to."""
    opaque = {
        node.params["eqn"].uid: node.params["eqn"]
        for node in program.nodes()
        if node.op == "opaque"
    }
    return {
        "lax": lax,
        "jnp": jnp,
        "np": np,
        "fused": fused,  # fused ops render as `fused.<name>(...)`
        "consts": dict(program.consts),
        "opaque": opaque,
    }


def to_callable(program: Program, name: str = "optimized") -> Callable[..., tuple[Any, ...]]:
    """Compile the program to a Python function over flat arrays returning a tuple."""
    source = render(program, name)
    filename = f"<superopt-{next(_counter)}:{name}>"
    # Registering the source lets tracebacks and `inspect.getsource` show it.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope = namespace(program)
    exec(compile(source, filename, "exec"), scope)
    return scope[name]


def evaluate(program: Program, *args: Any) -> tuple[Any, ...]:
    """Run the program by interpreting the IR node by node (a reference to codegen)."""
    env: dict[int, Any] = {}
    for node in program.nodes():
        env[id(node)] = _eval_node(node, env, args, program)
    return tuple(env[id(o)] for o in program.outputs)


def _eval_node(node: Node, env: dict[int, Any], args: tuple[Any, ...], program: Program) -> Any:
    if node.op == "input":
        return args[node.params["index"]]
    if node.op == "const":
        return program.consts[node.params["key"]]
    return get_op(node.op).lower(*[env[id(a)] for a in node.args], **node.params)
