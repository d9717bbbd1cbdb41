"""The analytical baseline: a calibrated, fusion-aware roofline.

Per program: FLOPs and transcendentals from the op registry, bytes moved from XLA's own
`compiled.cost_analysis()` (which counts bytes after XLA's fusion) where it answers and the
program has no loop (XLA counts one trip of a loop body), else a fusion-aware estimate from
the graph (elementwise ops fused into their consumers, every tile of a loop counted). These
become seconds through the peak matmul FLOP/s, transcendental rate and memory bandwidth that
microbenchmarks measure on this machine (cached per device), and are combined as

    t = c0 + c_roof * max(t_compute, t_memory) + c_sum * (t_compute + t_memory)
        + c_kernel * kernels + c_dot * dots + c_opaque * opaques

with the coefficients fitted by non-negative least squares on relative error over the
training split (`fit`). Uncalibrated, it is the plain roofline plus a per-kernel launch
overhead.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int

from superopt.ir import Program, get_op

from .features import FEATURE_INDEX as _COL
from .features import OPCODE_ID, UNKNOWN, GraphArrays
from .model import AbstractCostModel

TERM_NAMES = ("const", "roofline", "sum", "kernels", "dots", "opaques")

# Ops that XLA fuses into their consumers (no kernel, no round trip to memory of their own).
_FUSIBLE = {
    OPCODE_ID[name]
    for name in (
        "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "convert_element_type",
        "input", "const", "literal", "iota", "transpose", "slice",
    )
}  # fmt: skip
_LEAVES = {OPCODE_ID[name] for name in ("input", "const", "literal", "iota")}
_DOT = OPCODE_ID["dot_general"]
# Loops inside these (and perhaps inside an opaque op). XLA's cost analysis counts one trip
# of a loop body: its bytes for a tiled program are one tile's traffic, which grows with the
# tile while the runtime falls. So a program with a loop gets the graph's estimate, which
# counts every tile (`loop_bytes="estimate"`). Taking the larger of the two
# (`loop_bytes="larger"`, what bases of earlier weights did) leaves the roofline no idea of
# tile sizes: fitted alike, tile tau -0.11 on the validation families against 0.86.
_LOOPS = {OPCODE_ID["chunked_xent"], OPCODE_ID["flash_attention"], UNKNOWN}
LOOP_BYTES = ("estimate", "larger")
_REDUCE = {OPCODE_ID[n] for n in OPCODE_ID if n.startswith("reduce_") or n.startswith("arg")}


@dataclass(frozen=True)
class Calibration:
    """Peak rates of this machine, measured by microbenchmarks."""

    matmul_flops: float
    transcendentals: float
    bandwidth: float
    overhead_s: float
    backend: str
    device_kind: str


# The rates a roofline divides by: each must be a positive, finite number.
_RATES = ("matmul_flops", "transcendentals", "bandwidth")


def _number(value: Any, name: str, *, positive: bool = False) -> float:
    """`value` as a float if it is a finite real number (non-negative, or positive when
    `positive`), else `ValueError` naming `name`. Strings and booleans are not numbers."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(f"{name} must be {kind} finite number, not {value!r}")
    return float(value)


def calibration_from_json(data: Any) -> Calibration:
    """A `Calibration` from its JSON object (`asdict`), checked: the three rates positive
    and finite, the overhead finite and non-negative, backend and device kind strings.
    Raises `ValueError` naming the bad field."""
    if not isinstance(data, dict):
        raise ValueError(f"calibration must be a JSON object, not {data!r}")
    names = [f.name for f in fields(Calibration)]
    missing = [n for n in names if n not in data]
    unknown = [k for k in data if k not in names]
    if missing or unknown:
        raise ValueError(f"calibration has fields {sorted(data)}, not {names}")
    values: dict[str, Any] = {}
    for name in names:
        value = data[name]
        if name in ("backend", "device_kind"):
            if not isinstance(value, str):
                raise ValueError(f"calibration.{name} must be a string, not {value!r}")
            values[name] = value
        else:
            values[name] = _number(value, f"calibration.{name}", positive=name in _RATES)
    return Calibration(**values)


def _cache_dir() -> Path:
    root = os.environ.get("SUPEROPT_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "superopt"


def _median_time(fn: Any, *args: Any, rounds: int = 15) -> float:
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*args))
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def calibrate(cache: bool = True, force: bool = False) -> Calibration:
    """Measure (or read from the cache) the machine's peak rates.

    **Arguments:**

    - `cache`: read and write `calibration-<backend>-<device>.json` in the superopt cache
      directory (`SUPEROPT_CACHE_DIR`, default `~/.cache/superopt`).
    - `force`: measure even if a cached calibration exists.

    **Returns:** a `Calibration`.
    """
    dev = jax.devices()[0]
    backend, kind = jax.default_backend(), str(dev.device_kind)
    path = _cache_dir() / f"calibration-{backend}-{kind.replace(' ', '_').replace('/', '_')}.json"
    if cache and not force and path.exists():
        try:
            return calibration_from_json(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass  # a stale or corrupt cache is measured again
    key = jax.random.PRNGKey(0)
    overhead = _median_time(lambda x: x + 1.0, jnp.float32(1.0), rounds=50)
    n = 512 if backend == "cpu" else 4096
    a = jax.random.normal(key, (n, n), jnp.float32)
    t_mm = _median_time(lambda x, y: x @ y, a, a)
    size = 1 << 22 if backend == "cpu" else 1 << 26
    v = jax.random.normal(key, (size,), jnp.float32)
    t_bw = _median_time(lambda x: x * 2.0 + 1.0, v)
    t_exp = _median_time(lambda x: jnp.exp(x), v)
    calib = Calibration(
        matmul_flops=2.0 * n**3 / max(t_mm - overhead, 1e-9),
        transcendentals=size / max(t_exp - overhead, 1e-9),
        bandwidth=8.0 * size / max(t_bw - overhead, 1e-9),
        overhead_s=overhead,
        backend=backend,
        device_kind=kind,
    )
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(asdict(calib), indent=2))
        except OSError:
            pass  # a read-only cache only costs a re-measurement next time
    return calib


def dataset_calibration(meta: dict[str, Any]) -> Calibration:
    """The calibration a dataset records (`meta["calibration"]`: the peak rates of the
    machine that measured it, written by `superopt._corpus.export`), else this machine's
    (`calibrate()`).

    Fits on a dataset use it, so that training the same dataset gives the same base on any
    machine: the microbenchmarks behind `calibrate` move by 2x between runs on a shared
    machine, and the base the networks learn to correct moved with them.

    Raises `ValueError` naming the field if the recorded calibration is malformed."""
    recorded = meta.get("calibration")
    if recorded is None:
        return calibrate()
    return calibration_from_json(recorded)


def xla_cost(program: Program) -> np.ndarray:
    """XLA's `(flops, transcendentals, bytes accessed)` of the compiled program (NaNs if
    XLA does not say)."""
    try:
        structs = [jax.ShapeDtypeStruct(n.shape, n.dtype) for n in program.inputs]

        def run(*xs: Any) -> tuple[Any, ...]:
            env: dict[int, Any] = {}
            for node in program.nodes():
                if node.op == "input":
                    env[id(node)] = xs[node.params["index"]]
                elif node.op == "const":
                    env[id(node)] = program.consts[node.params["key"]]
                else:
                    args = [env[id(a)] for a in node.args]
                    env[id(node)] = get_op(node.op).lower(*args, **node.params)
            return tuple(env[id(o)] for o in program.outputs)

        analysis = jax.jit(run).lower(*structs).compile().cost_analysis()
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0] if analysis else {}
        return np.asarray(
            [
                analysis.get("flops", np.nan),
                analysis.get("transcendentals", np.nan),
                analysis.get("bytes accessed", np.nan),
            ],
            np.float32,
        )
    except Exception:
        return np.full(3, np.nan, np.float32)


def _unlog(x: np.ndarray) -> np.ndarray:
    return np.expm1(np.asarray(x, np.float64))


def _node_parts(opcode: np.ndarray, feat: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "flops": _unlog(feat[:, _COL["log_flops"]]),
        "trans": _unlog(feat[:, _COL["log_transcendentals"]]),
        "read": _unlog(feat[:, _COL["log_bytes_read"]]),
        "written": _unlog(feat[:, _COL["log_bytes_written"]]),
        "elementwise": feat[:, _COL["elementwise"]] > 0.5,
        "fusible": np.isin(opcode, list(_FUSIBLE)),
        "leaf": np.isin(opcode, list(_LEAVES)),
    }


def program_terms(
    graph: GraphArrays, calib: Calibration, loop_bytes: str = "estimate"
) -> np.ndarray:
    """The model's terms of one program (`TERM_NAMES`), in seconds or counts; `loop_bytes`
    says which bytes a program with a loop moves (`LOOP_BYTES`, see `_LOOPS`)."""
    p = _node_parts(graph.node_opcode, graph.node_feat)
    t_compute = p["flops"].sum() / calib.matmul_flops + p["trans"].sum() / calib.transcendentals
    is_kernel = ~(p["fusible"] | p["elementwise"])
    # An elementwise node whose users are all fused into it is no kernel of its own;
    # one read by a kernel (or an output) is the root of a fusion.
    users_fused = np.zeros(graph.num_nodes, bool)
    if graph.num_edges:
        src, dst = graph.edge_index[:, 0], graph.edge_index[:, 1]
        feeds_kernel = np.zeros(graph.num_nodes, bool)
        np.logical_or.at(
            feeds_kernel, src, is_kernel[dst] | np.isin(graph.node_opcode[dst], list(_REDUCE))
        )
        users_fused = ~feeds_kernel
    is_output = graph.node_feat[:, _COL["is_output"]] > 0.5
    fusion_root = p["elementwise"] & (~users_fused | is_output)
    kernels = int(is_kernel.sum() + fusion_root.sum() - (p["leaf"] & is_kernel).sum())
    xla_bytes = float(graph.xla_cost[2]) if graph.xla_cost is not None else np.nan
    materialized = (is_kernel | fusion_root) & ~p["leaf"]
    estimate = float((p["written"] * materialized).sum() + (p["read"] * is_kernel).sum())
    if np.isfinite(xla_bytes) and xla_bytes > 0:
        if not np.isin(graph.node_opcode, list(_LOOPS)).any():
            nbytes = xla_bytes
        else:
            nbytes = max(xla_bytes, estimate) if loop_bytes == "larger" else estimate
    else:
        nbytes = estimate
    t_memory = nbytes / calib.bandwidth
    dots = int((graph.node_opcode == _DOT).sum())
    opaques = int((graph.node_opcode == 0).sum())
    return np.asarray(
        [1.0, max(t_compute, t_memory), t_compute + t_memory, kernels, dots, opaques], np.float64
    )


def default_coefficients(calib: Calibration) -> np.ndarray:
    """The uncalibrated roofline: one launch overhead per kernel."""
    return np.asarray([calib.overhead_s, 1.0, 0.0, calib.overhead_s * 0.1, 0.0, 0.0])


class AnalyticalCostModel(AbstractCostModel):
    """The calibrated roofline (see the module docstring).

    **Arguments:**

    - `calibration`: the machine's peak rates (`calibrate()`).
    - `coef`: one coefficient per `TERM_NAMES` entry (non-negative).
    - `loop_bytes`: the bytes of a program with a loop: `"estimate"` (the graph's) or
      `"larger"` (the larger of XLA's and the graph's; see `_LOOPS`).
    """

    calibration: Calibration = eqx.field(static=True)
    coef: tuple[float, ...] = eqx.field(static=True)
    loop_bytes: str = eqx.field(static=True)

    def __init__(
        self,
        calibration: Calibration | None = None,
        coef: np.ndarray | None = None,
        loop_bytes: str = "estimate",
    ):
        if loop_bytes not in LOOP_BYTES:
            raise ValueError(f"loop_bytes is one of {LOOP_BYTES}, not {loop_bytes!r}")
        self.calibration = calibrate() if calibration is None else calibration
        values = default_coefficients(self.calibration) if coef is None else coef
        self.coef = tuple(float(c) for c in np.asarray(values, float).reshape(-1))
        self.loop_bytes = loop_bytes

    def terms(self, graphs: Sequence[GraphArrays]) -> np.ndarray:
        rows = [program_terms(g, self.calibration, self.loop_bytes) for g in graphs]
        return np.stack(rows).reshape(len(graphs), len(TERM_NAMES))

    def score_programs(self, graphs: Sequence[GraphArrays]) -> np.ndarray:
        if not graphs:
            return np.zeros(0)
        return np.maximum(self.terms(graphs) @ np.asarray(self.coef), 1e-9)

    def score_nodes(
        self, node_opcode: Int[np.ndarray, " n"], node_feat: Float[np.ndarray, "n feat"]
    ) -> np.ndarray:
        c = self.calibration
        p = _node_parts(np.asarray(node_opcode), np.asarray(node_feat))
        compute = p["flops"] / c.matmul_flops + p["trans"] / c.transcendentals
        kernel = ~(p["fusible"] | p["elementwise"])
        # Fused elementwise ops move no memory of their own; kernels read and write.
        memory = np.where(kernel, p["read"] + p["written"], 0.0) / c.bandwidth
        roof = np.maximum(compute, memory)
        return (
            self.coef[1] * roof
            + self.coef[2] * (compute + memory)
            + self.coef[3] * kernel
            + self.coef[4] * (np.asarray(node_opcode) == _DOT)
        )

    def scaled(self, factor: float) -> AnalyticalCostModel:
        """A copy whose predictions are `factor` times this one's."""
        return AnalyticalCostModel(
            self.calibration, np.asarray(self.coef) * factor, self.loop_bytes
        )

    def fit(self, graphs: Sequence[GraphArrays], runtime_s: np.ndarray) -> AnalyticalCostModel:
        """A copy with coefficients fitted (non-negative least squares on relative error)."""
        from scipy.optimize import nnls

        a = self.terms(graphs)
        t = np.asarray(runtime_s, np.float64)
        scale = np.maximum(np.abs(a).max(0), 1e-30)
        coef, _ = nnls((a / scale) / t[:, None], np.ones_like(t), maxiter=10_000)
        return AnalyticalCostModel(self.calibration, coef / scale, self.loop_bytes)

    def to_json(self) -> str:
        return json.dumps(
            {
                "calibration": asdict(self.calibration),
                "coef": list(self.coef),
                "loop_bytes": self.loop_bytes,
            }
        )

    @staticmethod
    def from_json(text: str) -> AnalyticalCostModel:
        """The model `to_json` wrote. Raises `ValueError` naming the bad field when the
        text is not JSON, or a field is missing or out of range (a rate that is not a
        positive finite number, coefficients that are not `len(TERM_NAMES)` non-negative
        finite numbers, an unknown `loop_bytes`)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"an analytical model is a JSON object, not {type(data).__name__}")
        if "calibration" not in data or "coef" not in data:
            raise ValueError(
                f"an analytical model has 'calibration' and 'coef', not only {sorted(data)}"
            )
        calibration = calibration_from_json(data["calibration"])
        coef = data["coef"]
        if not isinstance(coef, list) or len(coef) != len(TERM_NAMES):
            raise ValueError(
                f"coef must be a list of {len(TERM_NAMES)} numbers ({', '.join(TERM_NAMES)}), "
                f"not {coef!r}"
            )
        coef = [_number(c, f"coef[{i}] ({TERM_NAMES[i]})") for i, c in enumerate(coef)]
        # Written before `loop_bytes` existed, a model was fitted with the larger bytes.
        loop_bytes = data.get("loop_bytes", "larger")
        if not isinstance(loop_bytes, str) or loop_bytes not in LOOP_BYTES:
            raise ValueError(f"loop_bytes is one of {LOOP_BYTES}, not {loop_bytes!r}")
        return AnalyticalCostModel(calibration, np.asarray(coef), loop_bytes)
