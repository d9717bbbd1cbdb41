"""The report that comes with every optimized function: what won, why, and how sure we are.

A `Report` is plain data: it prints with rich (a panel with a summary table and the
rewrites), as text through `str()`, and as JSON through `to_json()` — the same JSON the
tuning cache stores, so `Report.from_dict(json.loads(report.to_json()))` gives it back.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ._search import RewriteStep

Status = Literal["optimized", "unchanged", "fallback"]

_STATUS_STYLE = {"optimized": "bold green", "unchanged": "yellow", "fallback": "bold red"}


@dataclass(frozen=True)
class Report:
    """What `superopt.optimize` did to one function.

    **Arguments:**

    - `function`: the name of the optimized function.
    - `status`: `"optimized"` (a rewritten program won), `"unchanged"` (nothing better was
      found or kept: the original function is returned) or `"fallback"` (something failed
      and the original function is returned; `reason` says what).
    - `reason`: one or more sentences on why this status.
    - `rewrites`: the rewrites that turn the reference into the winner, each shown as
      (rule, before, after).
    - `verified`: whether the returned program was checked against the original.
    - `verdict`: the verifier's verdict as a dict (`ok`, `max_rel_error`, `where`,
      `message`, `checks`), or `None` when verification was off or never ran.
    - `speedup`: measured speedup of the result over `jax.jit(fn)`; `None` when the
      result was not timed (`budget=0`, or the original function was kept).
    - `predicted_s`: the cost model's predicted runtime of the winner, if it gave one.
    - `measured_s`: the measured median runtime of the result, if measured.
    - `reference_s`: the measured median runtime of `jax.jit(fn)`, if measured.
    - `ops_before`: op counts of the traced program.
    - `ops_after`: op counts of the returned program.
    - `phase_s`: seconds spent in each phase (trace, search, codegen, verify, measure).
    - `backend`: JAX's default backend (`"cpu"`, `"gpu"`, `"tpu"`).
    - `device_kind`: the device kind of the first device.
    - `cost_model`: the name of the cost model the search ranked with.
    - `search_stats`: the search's statistics (e-graph size, time, ...).
    - `candidate`: the label of the winning candidate.
    - `candidates_tried`: how many candidates were generated and checked.
    - `cached`: whether the choice came from the tuning cache (a stored winner rebuilt
      without searching; it was verified when it was stored).
    - `measurements`: with a budget, every timed candidate: `label`, `key`, `rules`,
      `predicted_s`, `measured_s`, `reference_s` (`jax.jit` in the same timed run),
      `speedup`, `spread` and `reused` (the timing came from the tuning cache).
    """

    function: str
    status: Status
    reason: str = ""
    rewrites: tuple[RewriteStep, ...] = ()
    verified: bool = False
    verdict: Mapping[str, Any] | None = None
    speedup: float | None = None
    predicted_s: float | None = None
    measured_s: float | None = None
    reference_s: float | None = None
    ops_before: Mapping[str, int] = field(default_factory=dict)
    ops_after: Mapping[str, int] = field(default_factory=dict)
    phase_s: Mapping[str, float] = field(default_factory=dict)
    backend: str = ""
    device_kind: str = ""
    cost_model: str = ""
    search_stats: Mapping[str, Any] = field(default_factory=dict)
    candidate: str = "reference"
    candidates_tried: int = 0
    cached: bool = False
    measurements: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-compatible Python data."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "rewrites":
                value = [dataclasses.asdict(r) for r in value]
            out[f.name] = _jsonable(value)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """The report as a JSON string (`json.loads` gives `to_dict()` back)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """Rebuild a report from `to_dict()` output (unknown keys are ignored).

        **Arguments:**

        - `data`: a mapping as written by `to_dict()` or read back from `to_json()`.

        **Returns:** the `Report`.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["rewrites"] = tuple(RewriteStep(**r) for r in data.get("rewrites", ()))
        kwargs["measurements"] = tuple(dict(m) for m in data.get("measurements", ()))
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Report:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def summary(self) -> str:
        """One line: status, speedup and rewrite count."""
        parts = [f"{self.function}: {self.status}"]
        if self.rewrites:
            parts.append(f"{len(self.rewrites)} rewrite(s)")
        if self.speedup is not None:
            parts.append(f"{self.speedup:.2f}x vs jax.jit")
        parts.append("verified" if self.verified else "not verified")
        return ", ".join(parts)

    def __rich__(self) -> Panel:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()

        # Plain `Text` everywhere: names such as `f[candidate]` are not rich markup.
        def row(key: str, value: str | Text) -> None:
            table.add_row(key, value if isinstance(value, Text) else Text(value))

        row("status", Text(self.status, style=_STATUS_STYLE.get(self.status, "")))
        if self.reason:
            row("reason", self.reason)
        row("candidate", f"{self.candidate} (of {self.candidates_tried} tried)")
        row("verified", _verdict_text(self.verified, self.verdict))
        row("speedup", "not measured" if self.speedup is None else
                      f"{self.speedup:.3f}x vs jax.jit")  # fmt: skip
        if self.reference_s is not None or self.measured_s is not None:
            row("measured", f"{_seconds(self.measured_s)} (jax.jit: "
                          f"{_seconds(self.reference_s)})")  # fmt: skip
        if self.predicted_s is not None:
            row("predicted", _seconds(self.predicted_s))
        row("ops", f"{_total(self.ops_before)} -> {_total(self.ops_after)}")
        row("cost model", self.cost_model or "-")
        row("device", f"{self.backend} ({self.device_kind})")
        if self.phase_s:
            row("time", ", ".join(f"{k} {v:.3f}s" for k, v in self.phase_s.items()))
        if self.search_stats:
            stats = self.search_stats.items()
            row("search", ", ".join(f"{k}={_short(v)}" for k, v in stats))
        if self.cached:
            row("cache", "choice read from the tuning cache (verified when stored)")
        parts: list[Any] = [table]
        if self.measurements:
            parts.append(measurements_table(self.measurements, self.candidate))
        if self.rewrites:
            rw = Table(title="rewrites", show_lines=False, expand=False)
            rw.add_column("rule", style="cyan")
            rw.add_column("before")
            rw.add_column("after")
            for step in self.rewrites:
                rw.add_row(Text(step.rule), Text(step.before), Text(step.after))
            parts.append(rw)
        return Panel(Group(*parts), title=Text(f"superopt: {self.function}"), expand=False)

    def __str__(self) -> str:
        buffer = io.StringIO()
        console = Console(file=buffer, width=100, color_system=None, force_terminal=False)
        console.print(self)
        return buffer.getvalue().rstrip() + "\n"


def measurements_table(measurements: Sequence[Mapping[str, Any]], winner: str = "") -> Table:
    """The timed candidates of an autotuned optimization as a rich table.

    **Arguments:**

    - `measurements`: `Report.measurements`.
    - `winner`: the winning candidate's label, marked in the table.

    **Returns:** a `rich.table.Table`, fastest first.
    """
    table = Table(title="timed candidates (* won; jax.jit timed in the same run)")
    table.add_column("candidate", no_wrap=True)
    for column in ("rewrites", "predicted", "measured", "jax.jit", "speedup", "timed"):
        table.add_column(column)
    ordered = sorted(measurements, key=lambda m: -float(m.get("speedup") or 0.0))
    for m in ordered:
        label = str(m.get("label", "?"))
        won = label == winner
        speed = m.get("speedup")
        table.add_row(
            Text(("* " if won else "  ") + label, style="bold green" if won else ""),
            Text(", ".join(m.get("rules") or ()) or "-"),
            _seconds(m.get("predicted_s")),
            _seconds(m.get("measured_s")),
            _seconds(m.get("reference_s")),
            "-" if not isinstance(speed, (int, float)) else f"{speed:.3f}x",
            "cached" if m.get("reused") else "now",
        )
    return table


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if hasattr(value, "item"):  # numpy and jax scalars
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return repr(value)


def verdict_dict(verdict: Any) -> dict[str, Any] | None:
    """A verifier's verdict as JSON-compatible data (`None` stays `None`)."""
    if verdict is None:
        return None
    if isinstance(verdict, Mapping):
        return _jsonable(verdict)
    if dataclasses.is_dataclass(verdict) and not isinstance(verdict, type):
        return _jsonable(dataclasses.asdict(verdict))
    names = ("ok", "max_rel_error", "where", "message", "checks")
    return _jsonable({n: getattr(verdict, n, None) for n in names})


def _verdict_text(verified: bool, verdict: Mapping[str, Any] | None) -> str:
    if verdict is None:
        return "yes" if verified else "no (verification off)"
    err = verdict.get("max_rel_error")
    err_text = f", max rel. error {err:.2e}" if isinstance(err, (int, float)) else ""
    checks = verdict.get("checks")
    if isinstance(checks, (list, tuple)):
        checks = len(checks)
    checks_text = f", {checks} input set(s)" if isinstance(checks, int) else ""
    return ("yes" if verified else "no") + err_text + checks_text


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.1f} us"
    if value < 1:
        return f"{value * 1e3:.3f} ms"
    return f"{value:.3f} s"


def _total(counts: Mapping[str, int]) -> str:
    skip = {"input", "const", "literal"}
    return str(sum(n for op, n in counts.items() if op not in skip))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
