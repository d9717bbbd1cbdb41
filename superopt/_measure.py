"""Measurement: wall-clock timings of compiled JAX callables, compared fairly.

Each callable is compiled and run once before timing (compilation is excluded), warmed up,
then timed in interleaved rounds: every round runs each callable once, in an order rotated
from round to round, so that drift in the machine (frequency scaling, other load) falls on
all of them alike. Results are blocked on, and summarised by medians and quartiles. Timings
are only ever meant to be compared within one call, on one machine.

Each timed call's minor page faults are counted too (`Timing.faults_per_call`). A buffer
mapped fresh for every call costs the operating system a fault per 4 KiB page the call
writes: on Linux, for outputs of 16 MiB and more, that can take several times as long as
the computation, and whether a process's calls pay it depends on what the process ran
before. Where that comes from, and how to fix it for a measurement run, is `PINNED_MALLOC`.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ._leaves import close_over_static, has_static_leaves

try:
    import resource
except ImportError:  # Windows: no page-fault counts
    resource = None  # type: ignore[assignment]


# glibc's allocator, fixed so that a call's page faults do not depend on what the process
# ran before. By default glibc serves a request of at least its mmap threshold with fresh
# pages (a fault per 4 KiB page on every call), and raises that threshold, up to 32 MiB,
# each time such a block is freed; it returns freed memory at the top of a heap to the
# system; and worker threads allocate from arenas of their own, whose heaps come and go.
# So a 16 MiB buffer faults on every call in some processes and never in others. Pinned:
# one arena, the threshold at its 32 MiB ceiling, nothing returned. A smaller buffer is
# then reused, as it is once a long-running process has raised the threshold. One of
# 32 MiB or more faults on every call (as in fresh processes under the defaults) unless the
# one heap has grown a free block that large. (Measured on the cost-model corpus's
# machine: costmodel/weights/CARD.md.) glibc reads these at startup, so a process is
# pinned only if it was started with them.
PINNED_MALLOC = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
}


def malloc_mode(environ: Mapping[str, str] | None = None) -> str:
    """How this process's allocator runs: `"pinned"` (started with `PINNED_MALLOC`),
    `"default"` (glibc with other settings), or `"other"` (not glibc: the settings do not
    apply). `environ` is the environment the process started with (default: this
    process's, as the kernel recorded it, which later changes to `os.environ` do not
    touch)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "other"
    env = _startup_environ() if environ is None else environ
    pinned = all(env.get(k) == v for k, v in PINNED_MALLOC.items())
    return "pinned" if pinned else "default"


def _startup_environ() -> Mapping[str, str]:
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:  # no procfs: the environment as it is now
        return os.environ
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


@dataclass(frozen=True)
class Timing:
    """Summary of the timed runs of one callable.

    **Arguments:**

    - `median_s`: median seconds per call.
    - `p25_s`, `p75_s`: the first and third quartiles, in seconds.
    - `min_s`: the fastest call, in seconds.
    - `n`: how many timed calls the summary is over.
    - `spread`: `(p75_s - p25_s) / median_s`, a scale-free measure of noise.
    - `faults_per_call`: the median number of minor page faults the process took during a
      timed call (`None` where the platform does not count them). Thousands mean the
      call's buffers were mapped fresh and zeroed by the operating system each time.
    """

    median_s: float
    p25_s: float
    p75_s: float
    min_s: float
    n: int
    spread: float
    faults_per_call: float | None = None

    @classmethod
    def from_samples(
        cls, samples: list[float] | np.ndarray, faults: Sequence[int] | None = None
    ) -> Timing:
        """Summarise per-call times in seconds (at least one), and optionally each call's
        minor page faults."""
        arr = np.asarray(samples, dtype=np.float64)
        if arr.size == 0:
            raise ValueError("a Timing needs at least one sample")
        p25, median, p75 = (float(v) for v in np.percentile(arr, [25, 50, 75]))
        spread = (p75 - p25) / median if median > 0 else 0.0
        per_call = float(np.median(faults)) if faults is not None and len(faults) else None
        return cls(median, p25, p75, float(arr.min()), int(arr.size), spread, per_call)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def speedup(baseline: Timing, other: Timing) -> float:
    """How many times faster `other` is than `baseline`, by medians (> 1 means faster).

    **Arguments:**

    - `baseline`: the timing of the reference (usually `jax.jit` of the original).
    - `other`: the timing of the variant.

    **Returns:**

    `baseline.median_s / other.median_s`.
    """
    if other.median_s <= 0:
        return float("inf")
    return baseline.median_s / other.median_s


def time_callables(
    fns: Mapping[str, Callable[..., Any]],
    args: tuple[Any, ...],
    *,
    warmup: int = 2,
    min_rounds: int = 5,
    max_rounds: int = 50,
    budget_s: float = 2.0,
) -> dict[str, Timing]:
    """Time several callables on the same arguments, interleaved.

    Each callable is wrapped in `jax.jit` and called once (compilation is not timed), then
    called `warmup` more times, then timed in rounds. A round calls every callable once,
    rotating the order each round, and blocks on each result. Rounds stop after
    `max_rounds`, or once the timed rounds have used `budget_s` seconds, but never before
    `min_rounds`. Leaves of `args` that are not arrays (an Equinox model's activation
    functions) are held static, as `eqx.filter_jit` holds them: each callable is timed as
    a function of the array leaves alone.

    ```python
    timings = superopt.time_callables({"ref": f, "opt": g}, (x, w), budget_s=1.0)
    print(superopt.speedup(timings["ref"], timings["opt"]))
    ```

    **Arguments:**

    - `fns`: callables by name; each takes `*args`.
    - `args`: the arguments, shared by all callables.
    - `warmup`: untimed calls after compilation.
    - `min_rounds`: rounds always run, whatever the budget.
    - `max_rounds`: the most rounds run.
    - `budget_s`: seconds of timed rounds after which no new round starts (compilation
        and warm-up are not counted).

    **Returns:**

    A [`superopt.Timing`][] for each name, in the order of `fns`.
    """
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(
            f"need 1 <= min_rounds <= max_rounds, got min_rounds={min_rounds}, "
            f"max_rounds={max_rounds}"
        )
    if not fns:
        return {}
    names = list(fns)
    if has_static_leaves(args):
        arrays: list[Any] = []
        bound = {}
        for name, fn in fns.items():
            bound[name], arrays = close_over_static(fn, args)
        fns, args = bound, tuple(arrays)
    # Arguments are placed on the device once so that no call pays a host transfer.
    args = jax.device_put(args)
    compiled = {name: jax.jit(fn) for name, fn in fns.items()}
    for name in names:
        jax.block_until_ready(compiled[name](*args))
    for _ in range(warmup):
        for name in names:
            jax.block_until_ready(compiled[name](*args))

    faults: list[list[int]] = [[] for _ in names]
    samples = timed_rounds(
        [compiled[name] for name in names],
        args,
        min_rounds=min_rounds,
        max_rounds=max_rounds,
        budget_s=budget_s,
        faults=faults,
    )
    return {name: Timing.from_samples(s, f) for name, s, f in zip(names, samples, faults)}


# A median of n normal samples has a standard error of 1.2533 sigma / sqrt(n), and sigma is
# the interquartile range / 1.349: about 0.93 x (IQR / median) / sqrt(n) of the median.
MEDIAN_ERROR = 1.2533 / 1.349


def timed_rounds(
    fns: Sequence[Callable[..., Any]],
    args: tuple[Any, ...],
    *,
    min_rounds: int,
    max_rounds: int,
    budget_s: float,
    target_error: float | None = None,
    faults: list[list[int]] | None = None,
) -> list[list[float]]:
    """The seconds of every timed call of each of `fns` on `args` (already compiled and
    warmed up), in rounds. With `faults` (one list per function), each call's minor page
    faults are appended to it as well, where the platform counts them (outside the timed
    span).

    A round calls every function once, rotating the order each round, and blocks on each
    result. Rounds stop after `max_rounds`, or once the timed calls have used `budget_s`
    seconds, or (with `target_error`) once every median's estimated relative standard
    error, `MEDIAN_ERROR * spread / sqrt(rounds)`, is below it; never before `min_rounds`.
    """
    samples: list[list[float]] = [[] for _ in fns]
    if not fns:
        return samples
    clock = time.perf_counter
    spent, rounds = 0.0, 0
    order = list(range(len(fns)))
    counting = faults is not None and resource is not None
    while rounds < max_rounds:
        offset = rounds % len(order)
        for i in order[offset:] + order[:offset]:
            fn = fns[i]
            faulted = _minor_faults() if counting else 0
            start = clock()
            jax.block_until_ready(fn(*args))
            elapsed = clock() - start
            if counting:
                faults[i].append(_minor_faults() - faulted)
            samples[i].append(elapsed)
            spent += elapsed
        rounds += 1
        if rounds < min_rounds:
            continue
        if spent >= budget_s:
            break
        if target_error is not None:
            spread = max(Timing.from_samples(s).spread for s in samples)
            if MEDIAN_ERROR * spread / rounds**0.5 < target_error:
                break
    return samples
