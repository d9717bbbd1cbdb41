"""`superopt.predict_runtime`: a cost model's runtime prediction for a function call."""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.extend.core as jcore

from ._trace import trace

# costmodel imports superopt.ir, so it is imported lazily here: importing superopt must
# not import costmodel (that would be circular when costmodel is imported first).

_MODEL_MSG = (
    "model must be 'learned', 'analytical' or a costmodel.AbstractCostModel instance, "
    "got {model!r}; e.g. `superopt.predict_runtime(fn, x, model='analytical')`"
)


class RuntimePrediction(float):
    """Predicted seconds (a `float`), with the model that made the prediction, how much
    the learned model's networks disagree on it (`spread`, a relative factor; NaN for
    other models), and a note (for instance why the learned model was not used)."""

    model: str
    note: str
    spread: float

    def __new__(
        cls, seconds: float, model: str, note: str = "", spread: float = float("nan")
    ) -> RuntimePrediction:
        self = super().__new__(cls, seconds)
        self.model = model
        self.note = note
        self.spread = float(spread)
        return self

    def __repr__(self) -> str:
        extra = "" if math.isnan(self.spread) else f", spread={self.spread:.3f}"
        extra += f", note={self.note!r}" if self.note else ""
        return f"RuntimePrediction({float(self)!r} s, model={self.model!r}{extra})"


# The files of a checkpoint directory that a prediction depends on.
_WEIGHT_FILES = ("model.eqx", "model.json", "analytical.json")
# The models named by a string, both read from a checkpoint directory.
NAMED_MODELS = ("learned", "analytical")


def weights_fingerprint(path: str | Path) -> str:
    """A short digest of the weights in a checkpoint directory (`model.eqx`, `model.json`,
    `analytical.json`; a missing file counts as missing): equal only for the same weights.

    The tuning cache keys a search's result by it, so that retrained weights search again
    instead of reusing what the previous weights chose."""
    stats = []
    for name in _WEIGHT_FILES:
        try:
            st = (Path(path) / name).stat()
            stats.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            stats.append((name, -1, -1))
    return _fingerprint(str(Path(path).absolute()), tuple(stats))


@functools.lru_cache(maxsize=32)
def _fingerprint(path: str, stats: tuple[tuple[str, int, int], ...]) -> str:
    # `stats` (modification time and size of each file) only keys this cache: rewritten
    # weights are read and hashed again.
    digest = hashlib.sha256()
    for name, _, size in stats:
        digest.update(name.encode())
        if size >= 0:
            try:
                digest.update((Path(path) / name).read_bytes())
            except OSError:
                digest.update(b"unreadable")
        else:
            digest.update(b"missing")
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _learned(path: str, backend: str, fingerprint: str) -> Any:
    # `fingerprint` keys the cache: weights rewritten in place (`superopt train`) are loaded
    # again.
    from costmodel.checkpoint import load_checkpoint

    return load_checkpoint(path, backend)


@functools.lru_cache(maxsize=8)
def _analytical(path: str, fingerprint: str) -> Any:
    # The fit stored next to the weights, else the calibrated roofline unfitted.
    from costmodel.analytical import AnalyticalCostModel
    from costmodel.checkpoint import load_analytical

    return load_analytical(path) or AnalyticalCostModel()


def _analytical_or_unfitted(path: Path, fingerprint: str, fallback: bool) -> tuple[Any, str]:
    """`(the analytical model of weights directory path, a note)`: with `fallback`, an
    unreadable `analytical.json` gives the unfitted roofline and a note saying so."""
    from costmodel.analytical import AnalyticalCostModel
    from costmodel.checkpoint import WeightsError

    try:
        return _analytical(str(path), fingerprint), ""
    except WeightsError as err:
        if not fallback:
            raise
        return AnalyticalCostModel(), f"{err}; the calibrated roofline is used without its fit"


def default_weights() -> Path:
    """The shipped weights directory of the default backend."""
    from costmodel.checkpoint import WEIGHTS_DIR

    return WEIGHTS_DIR / jax.default_backend()


def resolve_model(
    model: Any = "learned",
    weights: str | Path | None = None,
    fallback: bool = False,
) -> tuple[Any, str, str]:
    """The cost model named by `model`: `(model, its name, a note)`.

    **Arguments:**

    - `model`: `"learned"`, `"analytical"` or a model object.
    - `weights`: a checkpoint directory (default the shipped weights for this backend).
    - `fallback`: on missing, corrupt or wrong-backend learned weights, use the analytical
      model and say so in the note, instead of raising `WeightsError`; on a corrupt
      `analytical.json` (the analytical model's fit, stored with the weights), use the
      calibrated roofline unfitted and say so. A directory without `analytical.json` gives
      the unfitted roofline either way.

    **Returns:** `(a costmodel.AbstractCostModel, its name, a note)`.
    """
    from costmodel.checkpoint import WeightsError
    from costmodel.model import AbstractCostModel

    path = Path(weights) if weights is not None else default_weights()
    if isinstance(model, AbstractCostModel):
        return model, type(model).__name__, ""
    if model not in NAMED_MODELS:
        raise ValueError(_MODEL_MSG.format(model=model))
    fingerprint = weights_fingerprint(path)
    if model == "analytical":
        analytical, note = _analytical_or_unfitted(path, fingerprint, fallback)
        return analytical, "analytical", note
    try:
        return _learned(str(path), jax.default_backend(), fingerprint), "learned", ""
    except WeightsError as err:
        if not fallback:
            raise
        analytical, note = _analytical_or_unfitted(path, fingerprint, fallback)
        return (
            analytical,
            "analytical",
            "; ".join(filter(None, [f"learned model unavailable: {err}", note])),
        )


def predict_runtime(
    fn: Callable[..., Any],
    *args: Any,
    model: Any = "learned",
    static_argnums: int | Sequence[int] = (),
    weights: str | Path | None = None,
    fallback: bool = False,
) -> RuntimePrediction:
    """Predict how long `jax.jit(fn)(*args)` takes on this machine, without running it.

    ```python
    seconds = superopt.predict_runtime(f, x, w)                       # learned model
    seconds = superopt.predict_runtime(f, x, w, model="analytical")   # roofline baseline
    ```

    **Arguments:**

    - `fn`: the function (plain or jitted).
    - `*args`: example arguments (only their shapes and dtypes matter).
    - `model`: `"learned"` (shipped weights for this backend), `"analytical"`, or a
      `costmodel.AbstractCostModel`.
    - `static_argnums`: positions of non-array arguments.
    - `weights`: a checkpoint directory to use instead of the shipped weights.
    - `fallback`: if the learned weights are missing, corrupt or for another backend,
      predict with the analytical model (the result's `.note` says why) instead of
      raising `WeightsError`; if the analytical model's fit (`analytical.json` in the
      weights directory) is corrupt, predict with the unfitted roofline and say so.

    **Returns:** a `RuntimePrediction`: the seconds as a float, with `.model`, `.spread`
    and `.note`. The note names control flow (`while`, `scan`, `cond`) whose inner
    computation the trace keeps opaque (the models do not see the work inside it), ops
    that no training program of the learned model had, and says when its networks
    disagree by more than they did on any validation program
    (`LearnedCostModel.uncertain_spread`: a program unlike those they were trained on),
    and so the prediction leans on the calibrated roofline.
    """
    from costmodel.analytical import xla_cost
    from costmodel.features import featurize_program
    from costmodel.model import LearnedCostModel

    cost_model, name, note = resolve_model(model, weights, fallback)
    program = trace(fn, *args, static_argnums=static_argnums).program
    graph = featurize_program(program, xla_cost(program))
    notes = [note]
    spread = float("nan")
    if isinstance(cost_model, LearnedCostModel):
        seconds_a, spread_a = cost_model.score_with_spread([graph])
        seconds, spread = float(seconds_a[0]), float(spread_a[0])
        untrained = cost_model.untrained(graph)
        if untrained:
            notes.append(
                f"no program the learned model was trained on has {', '.join(untrained)}: "
                f"{'its' if len(untrained) == 1 else 'their'} cost is a guess"
            )
        if spread > cost_model.uncertain_spread:
            weight = float(cost_model.learned_weight(spread_a)[0])
            lean = (
                f"; the time is {weight:.0%} theirs and {1 - weight:.0%} the calibrated roofline's"
                if cost_model.fallback is not None
                else ""
            )
            notes.append(
                f"the learned model's networks disagree on this program (spread "
                f"{spread:.0%}, above the {cost_model.uncertain_spread:.0%} they reach on "
                f"their validation programs): it is unlike the programs they were trained "
                f"on, so treat the time as rough{lean}"
            )
    else:
        seconds = float(cost_model.score_programs([graph])[0])
    hidden = _hidden_computations(program)
    if hidden:
        counts = ", ".join(f"{prim} x{k}" if k > 1 else prim for prim, k in hidden.items())
        notes.append(
            f"the program calls {counts}, whose inner computation the model does not see "
            "(only its inputs and outputs): the work inside is left out of this "
            "prediction, so the real time can be far longer"
        )
    return RuntimePrediction(seconds, name, "; ".join(filter(None, notes)), spread)


def _hidden_computations(program: Any) -> dict[str, int]:
    """Primitives of `program` that run a computation of their own the trace keeps opaque
    (`while`, `scan`, `cond`, ...): name -> how many such calls."""

    def holds_jaxpr(value: Any) -> bool:
        if isinstance(value, (jcore.ClosedJaxpr, jcore.Jaxpr)):
            return True
        return isinstance(value, (tuple, list)) and any(map(holds_jaxpr, value))

    found: dict[str, int] = {}
    for node in program.nodes():
        if node.op == "opaque":
            eqn = node.params["eqn"]
            if any(holds_jaxpr(v) for v in eqn.params.values()):
                found[eqn.primitive.name] = found.get(eqn.primitive.name, 0) + 1
    return found
