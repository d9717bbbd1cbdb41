"""Checkpoints of the learned cost model: writing them, and loading them with every field
checked.

A checkpoint is a directory holding `model.eqx` (`eqx.tree_serialise_leaves`) and
`model.json` (hyperparameters, normalization, backend, device kind, dataset hash, metrics,
versions).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from superopt.ir import SuperoptError

from .analytical import AnalyticalCostModel
from .config import TrainConfig
from .dataset import Dataset
from .features import NUM_FEATURES, OPCODES
from .model import UNCERTAIN_SPREAD, GraphModel, LearnedCostModel

FORMAT_VERSION = 2

WEIGHTS_DIR = Path(__file__).parent / "weights"


class WeightsError(SuperoptError):
    """Cost-model weights that are missing, corrupt, or trained for another backend."""


def device_info() -> dict[str, str]:
    """The backend and device kind measurements and weights belong to."""
    dev = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": str(dev.device_kind)}


def save_checkpoint(
    path: str | Path,
    model: LearnedCostModel,
    config: TrainConfig,
    dataset: Dataset | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `model.eqx` and `model.json` into directory `path`.

    Each file is written under a temporary name in `path` and then renamed over the
    old one, so that a write that fails partway leaves no half-written file."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        # The ensemble size is the model's own (what loading must rebuild), whatever the
        # config asked for (a time limit can cut an ensemble short).
        "config": {**config.__dict__, "ensemble": len(model.networks)},
        "log_offset": model.log_offset,
        "base": model.base.to_json() if model.base is not None else None,
        "fallback": model.fallback.to_json() if model.fallback is not None else None,
        "uncertain_spread": model.uncertain_spread,
        "num_features": NUM_FEATURES,
        "num_opcodes": len(OPCODES),
        "trained_opcodes": model.trained_opcodes,
        "dataset_hash": dataset.content_hash() if dataset is not None else None,
        "dataset_summary": dataset.summary() if dataset is not None else None,
        "dataset_meta": dataset.meta if dataset is not None else None,
        "metrics": metrics or {},
        "versions": {
            "jax": jax.__version__,
            "equinox": eqx.__version__,
            "optax": importlib.metadata.version("optax"),
            "python": platform.python_version(),
        },
        **device_info(),
        **(extra or {}),
    }
    if dataset is not None and dataset.meta.get("backend"):
        # The weights belong to the machine the runtimes were measured on.
        meta["backend"] = dataset.meta["backend"]
        meta["device_kind"] = dataset.meta.get("device_kind", meta["device_kind"])
    text = json.dumps(meta, indent=2, default=str)
    leaves_tmp, meta_tmp = path / ".model.eqx.tmp", path / ".model.json.tmp"
    try:
        eqx.tree_serialise_leaves(leaves_tmp, model)
        meta_tmp.write_text(text)
        leaves_tmp.replace(path / "model.eqx")
        meta_tmp.replace(path / "model.json")
    finally:
        for tmp in (leaves_tmp, meta_tmp):
            tmp.unlink(missing_ok=True)
    return path


# `batch_graphs` is how many graphs one forward pass packs; far more than any training run
# uses, and small enough that a prediction's padded batch fits in memory.
_MAX_BATCH_GRAPHS = 1 << 16


def _check_int(value: Any, name: str, minimum: int, maximum: int | None = None) -> int:
    """`value` if it is an integer in `[minimum, maximum]`, else `ValueError` naming
    `name` (booleans, floats and strings are not integers)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not ok or (maximum is not None and value > maximum):
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        rule += f" at most {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be {rule}, not {value!r}")
    return value


class _Meta(NamedTuple):
    config: TrainConfig
    log_offset: float
    trained_opcodes: tuple[str, ...] | None
    base: AnalyticalCostModel | None
    fallback: AnalyticalCostModel | None
    uncertain_spread: float


def _analytical_field(meta: dict[str, Any], key: str, what: str) -> AnalyticalCostModel | None:
    """The analytical model in `meta[key]` (a JSON string), or `None` if absent."""
    if not meta.get(key):
        return None
    if not isinstance(meta[key], str):
        raise ValueError(f"{key} must be a JSON string, not {type(meta[key]).__name__}")
    try:
        return AnalyticalCostModel.from_json(meta[key])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{key} ({what}): {err}") from err


def _check_meta(meta: Any) -> _Meta:
    """The fields of a checkpoint's parsed `model.json` that `load_checkpoint` uses, each
    checked. Raises `ValueError` (or `KeyError`, `TypeError`) naming the bad field."""
    if not isinstance(meta, dict):
        raise ValueError(f"it holds a JSON {type(meta).__name__}, not an object")
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"config must be a JSON object, not {meta.get('config')!r}")
    cfg = TrainConfig.from_json(meta["config"])
    _check_int(cfg.width, "config.width", 1)
    _check_int(cfg.embed_dim, "config.embed_dim", 1)
    _check_int(cfg.num_layers, "config.num_layers", 0)
    _check_int(cfg.batch_graphs, "config.batch_graphs", 1, _MAX_BATCH_GRAPHS)
    _check_int(cfg.ensemble, "config.ensemble", 1)
    for name in ("correction", "context_shares"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"config.{name} must be true or false, not {getattr(cfg, name)!r}")
    if "log_offset" not in meta:
        raise ValueError("log_offset is missing")
    offset = meta["log_offset"]
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not np.isfinite(offset):
        raise ValueError(f"log_offset must be a finite number, not {offset!r}")
    # Absent from weights written before it was recorded.
    trained_opcodes = meta.get("trained_opcodes")
    if trained_opcodes is not None:
        if not isinstance(trained_opcodes, list):
            raise ValueError(f"trained_opcodes is not a list: {trained_opcodes!r}")
        bad = [name for name in trained_opcodes if not isinstance(name, str)]
        if bad:
            raise ValueError(f"trained_opcodes must be op names, not {bad[0]!r}")
        trained_opcodes = tuple(trained_opcodes)
    base = _analytical_field(meta, "base", "the analytical model it corrects")
    # Absent from weights written before the networks leaned on the roofline.
    fallback = _analytical_field(meta, "fallback", "the model it leans on where unsure")
    threshold = meta.get("uncertain_spread", UNCERTAIN_SPREAD)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not 0 < threshold < float("inf")
    ):
        raise ValueError(f"uncertain_spread must be a positive number, not {threshold!r}")
    return _Meta(cfg, float(offset), trained_opcodes, base, fallback, float(threshold))


def _float32_like(tree: Any) -> Any:
    """`tree` (of `jax.ShapeDtypeStruct`s) with each floating leaf's dtype float32,
    whatever `jax_enable_x64` says: the networks compute in float32."""

    def cast(x: Any) -> Any:
        if isinstance(x, jax.ShapeDtypeStruct) and jnp.issubdtype(x.dtype, jnp.floating):
            return jax.ShapeDtypeStruct(x.shape, jnp.float32)
        return x

    return jax.tree_util.tree_map(cast, tree)


def _read_leaf(f: Any, like: Any) -> Any:
    """The `eqx.tree_deserialise_leaves` filter of `load_checkpoint`: an array leaf is
    read as saved (no pickles), must have `like`'s shape and, if `like` is floating, be
    floating and finite; it comes back float32 (a float64 file, from training with
    `jax_enable_x64`, loads as float32 too). Other leaves as Equinox reads them."""
    if not isinstance(like, (jax.ShapeDtypeStruct, jax.Array, np.ndarray)):
        return eqx.default_deserialise_filter_spec(f, like)
    value = np.load(f, allow_pickle=False)
    if value.shape != tuple(like.shape):
        raise ValueError(f"shape {value.shape} on disk, {tuple(like.shape)} expected")
    if np.issubdtype(like.dtype, np.floating):
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"dtype {value.dtype} on disk, a floating dtype expected")
        value = value.astype(np.float32)
        if not np.isfinite(value).all():
            raise ValueError("non-finite values (NaN or infinity) on disk")
    elif value.dtype != like.dtype:
        raise ValueError(f"dtype {value.dtype} on disk, {like.dtype} expected")
    return value if isinstance(like, np.ndarray) else jnp.asarray(value)


def _describe(err: BaseException) -> str:
    """What went wrong: `err`, or when Equinox wrapped a leaf's error in ones naming the
    leaf, the leaf (as `.network.embed.weight`) and the error itself."""
    leaf = None
    while isinstance(getattr(err, "path", None), tuple) and err.__cause__ is not None:
        leaf = err.path if leaf is None else leaf  # the outermost error has the full path
        err = err.__cause__
    text = f"{type(err).__name__}: {err}"
    return text if leaf is None else f"leaf {jax.tree_util.keystr(leaf)}: {text}"


def load_checkpoint(path: str | Path, backend: str | None = None) -> LearnedCostModel:
    """Load a checkpoint written by `save_checkpoint`.

    The weights load as float32 whether or not `jax_enable_x64` is on. Loading only
    reads: a failed load leaves the files as they were.

    **Arguments:**

    - `path`: the checkpoint directory.
    - `backend`: the backend the weights must have been trained for (`None` skips the
      check).

    **Returns:** the `LearnedCostModel`. Raises `WeightsError` saying what to do when the
    files are missing, corrupt (including a `model.json` field of the wrong type or out
    of range, which the message names), of another format, or for another backend.
    """
    path = Path(path)
    meta_path, leaves_path = path / "model.json", path / "model.eqx"
    if not meta_path.exists() or not leaves_path.exists():
        raise WeightsError(
            f"no cost-model weights at {path} (need model.json and model.eqx); train them "
            "with `superopt collect` then `superopt train`, or use model='analytical'"
        )
    try:
        meta = json.loads(meta_path.read_text())
        checked = _check_meta(meta)
        cfg = checked.config
    except Exception as err:  # unreadable, not JSON, or a field out of range
        reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
        raise WeightsError(
            f"{meta_path} is not a readable cost-model metadata file ({reason}); retrain "
            "with `superopt train`"
        ) from err
    if meta.get("format_version") != FORMAT_VERSION or meta.get("num_features") != NUM_FEATURES:
        raise WeightsError(
            f"weights at {path} were written for another feature layout (format "
            f"{meta.get('format_version')}, {meta.get('num_features')} features; this "
            f"version has format {FORMAT_VERSION}, {NUM_FEATURES}); retrain with "
            "`superopt train`"
        )
    if backend is not None and meta.get("backend") != backend:
        raise WeightsError(
            f"weights at {path} were trained on backend {meta.get('backend')!r} "
            f"({meta.get('device_kind')}), not {backend!r}: runtimes do not transfer "
            "between machines. Train weights for this backend with `superopt collect` "
            "and `superopt train`, or use model='analytical'"
        )

    # Every network holds at least one array per layer and one more, and each array in
    # the file takes at least a 64-byte header: a config naming more cannot match.
    try:
        size = leaves_path.stat().st_size
    except OSError:
        size = 0  # reading the file below says what is wrong with it
    if size and cfg.ensemble * (cfg.num_layers + 1) * 64 > size:
        raise WeightsError(
            f"{leaves_path} is corrupt or does not match {meta_path} (its {size} bytes "
            f"cannot hold the config.ensemble={cfg.ensemble} networks of "
            f"config.num_layers={cfg.num_layers} layers it names); retrain with "
            "`superopt train`"
        )
    try:
        # Shapes and dtypes only (`filter_eval_shape` allocates nothing, whatever sizes
        # the config names); every array is read from the file.
        blank = _float32_like(
            eqx.filter_eval_shape(
                GraphModel,
                cfg.width,
                cfg.embed_dim,
                cfg.num_layers,
                key=jax.random.PRNGKey(0),
                correction=cfg.correction,
                context_shares=cfg.context_shares,
            )
        )
        skeleton = LearnedCostModel(
            blank,
            np.zeros(NUM_FEATURES, np.float32),
            np.ones(NUM_FEATURES, np.float32),
            checked.log_offset,
            cfg.batch_graphs,
            checked.base,
            (blank,) * (cfg.ensemble - 1),
            checked.trained_opcodes,
            checked.fallback,
            checked.uncertain_spread,
        )
    except Exception as err:
        raise WeightsError(
            f"{meta_path} describes a network that cannot be built ({_describe(err)}); "
            "retrain with `superopt train`"
        ) from err
    try:
        with open(leaves_path, "rb") as f:
            model = eqx.tree_deserialise_leaves(f, skeleton, filter_spec=_read_leaf)
            if f.read(1):
                raise ValueError(
                    f"the file holds more arrays than the {cfg.ensemble} network(s) of "
                    f"width {cfg.width} and {cfg.num_layers} layers that the config describes"
                )
        if not (np.asarray(model.feat_std) > 0).all():
            raise ValueError("feat_std (the feature normalization) is not positive")
    except Exception as err:
        raise WeightsError(
            f"{leaves_path} is corrupt or does not match {meta_path} ({_describe(err)}); "
            "retrain with `superopt train`"
        ) from err
    return model


def load_analytical(path: str | Path) -> AnalyticalCostModel | None:
    """The fitted analytical model of checkpoint directory `path` (its `analytical.json`,
    which `superopt train` writes next to the learned weights), or `None` if it has none.

    Raises `WeightsError` naming the file when it cannot be read or does not hold an
    analytical model (a field missing, of the wrong type or out of range)."""
    file = Path(path) / "analytical.json"
    if not file.exists():
        return None
    try:
        return AnalyticalCostModel.from_json(file.read_text())
    except (OSError, ValueError, KeyError, TypeError) as err:  # UnicodeDecodeError included
        raise WeightsError(
            f"{file} is not a readable analytical cost model ({type(err).__name__}: {err}); "
            "retrain with `superopt train`"
        ) from err


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The `model.json` of a checkpoint directory."""
    return json.loads((Path(path) / "model.json").read_text())
