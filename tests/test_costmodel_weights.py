"""Loading cost-model weights: float32 whatever `jax_enable_x64` says, and every corrupt
field a `WeightsError` (or, for the analytical model, a `ValueError`) that names it, never a
crash deep in Equinox or a NaN prediction, and never a change to the files on disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superopt
from costmodel.analytical import AnalyticalCostModel, Calibration, calibrate
from costmodel.checkpoint import WeightsError, load_checkpoint, save_checkpoint
from costmodel.config import TrainConfig
from costmodel.features import NUM_FEATURES
from costmodel.model import GraphModel, LearnedCostModel
from superopt._predict import default_weights


def f(x, w):
    return jnp.tanh(x @ w).sum()


ARGS = (jnp.ones((16, 32), jnp.float32), jnp.ones((32, 8), jnp.float32))


@contextlib.contextmanager
def x64():
    """`jax_enable_x64` on inside, restored after (it is global)."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def snapshot(path: Path) -> dict[str, tuple[str, int]]:
    """Every file under `path`: its digest and modification time."""
    return {
        str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def weights(tmp_path):
    """A copy of the shipped weights (never the shipped files themselves)."""
    path = tmp_path / "weights"
    shutil.copytree(default_weights(), path)
    return path


def _tiny(tmp_path, *, ensemble=1, x64_arrays=False):
    """A tiny untrained checkpoint (no dataset) and its model."""
    config = TrainConfig(width=8, embed_dim=4, num_layers=1, batch_graphs=4, ensemble=ensemble)
    nets = [GraphModel(8, 4, 1, key=jax.random.PRNGKey(k)) for k in range(ensemble)]
    dtype = np.float64 if x64_arrays else np.float32
    model = LearnedCostModel(
        nets[0], np.zeros(NUM_FEATURES, dtype), np.ones(NUM_FEATURES, dtype), -9.0, 4,
        members=tuple(nets[1:]),
    )  # fmt: skip
    save_checkpoint(tmp_path, model, config)
    return tmp_path, model


def _graphs():
    from costmodel.features import featurize_program

    return [featurize_program(superopt.trace(f, *ARGS).program)]


def _arrays(model):
    return [x for x in jax.tree_util.tree_leaves(model) if isinstance(x, (jax.Array, np.ndarray))]


# --- jax_enable_x64 ------------------------------------------------------------------------


def test_shipped_weights_load_and_predict_the_same_under_x64(weights):
    plain = superopt.predict_runtime(f, *ARGS, weights=default_weights())
    loaded = load_checkpoint(default_weights(), backend="cpu")
    with x64():
        # A path of its own, so that predict_runtime loads it again, under x64.
        wide = superopt.predict_runtime(f, *ARGS, weights=weights)
        model = load_checkpoint(weights, backend="cpu")
        assert {str(a.dtype) for a in _arrays(model)} == {"float32"}
        scores = model.score_programs(_graphs())
    assert not jax.config.jax_enable_x64
    assert wide.model == plain.model == "learned"
    assert float(wide) == pytest.approx(float(plain), rel=1e-6)
    assert wide.spread == pytest.approx(plain.spread, rel=1e-5, abs=1e-7)
    assert np.allclose(scores, loaded.score_programs(_graphs()), rtol=1e-6)


def test_weights_saved_as_float64_load_as_float32(tmp_path):
    with x64():
        path, model = _tiny(tmp_path, ensemble=2, x64_arrays=True)
        assert "float64" in {str(a.dtype) for a in _arrays(model)}
        wide = model.score_programs(_graphs())
    loaded = load_checkpoint(path)
    assert {str(a.dtype) for a in _arrays(loaded)} == {"float32"}
    assert np.allclose(loaded.score_programs(_graphs()), wide, rtol=1e-5)
    with x64():
        assert np.allclose(load_checkpoint(path).score_programs(_graphs()), wide, rtol=1e-5)


# --- corrupt model.json ----------------------------------------------------------------------


def _set(*keys, value):
    def edit(meta):
        target = meta
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
        return meta

    return edit


def _base(**calibration):
    def edit(meta):
        base = json.loads(meta["base"])
        base["calibration"].update(calibration)
        meta["base"] = json.dumps(base)
        return meta

    return edit


def _drop(key):
    def edit(meta):
        del meta[key]
        return meta

    return edit


# (id, edit of the parsed model.json, what the message must name)
META_CASES = [
    ("str_width", _set("config", "width", value="64"), "config.width"),
    ("negative_width", _set("config", "width", value=-1), "config.width"),
    ("zero_width", _set("config", "width", value=0), "config.width"),
    ("float_width", _set("config", "width", value=64.5), "config.width"),
    ("bool_width", _set("config", "width", value=True), "config.width"),
    ("str_embed_dim", _set("config", "embed_dim", value="16"), "config.embed_dim"),
    ("negative_layers", _set("config", "num_layers", value=-2), "config.num_layers"),
    ("zero_batch", _set("config", "batch_graphs", value=0), "config.batch_graphs"),
    ("huge_batch", _set("config", "batch_graphs", value=10**12), "config.batch_graphs"),
    ("zero_ensemble", _set("config", "ensemble", value=0), "config.ensemble"),
    ("str_ensemble", _set("config", "ensemble", value="3"), "config.ensemble"),
    ("huge_ensemble", _set("config", "ensemble", value=10**9), "config.ensemble"),
    ("str_correction", _set("config", "correction", value="yes"), "config.correction"),
    ("unknown_config_key", _set("config", "colour", value="blue"), "colour"),
    ("config_list", _set("config", value=[1, 2]), "config"),
    ("str_nan_offset", _set("log_offset", value="nan"), "log_offset"),
    ("nan_offset", _set("log_offset", value=float("nan")), "log_offset"),
    ("inf_offset", _set("log_offset", value=float("inf")), "log_offset"),
    ("str_offset", _set("log_offset", value="-5.3"), "log_offset"),
    ("null_offset", _set("log_offset", value=None), "log_offset"),
    ("missing_offset", _drop("log_offset"), "log_offset"),
    ("int_opcodes", _set("trained_opcodes", value=[1, 2]), "trained_opcodes"),
    ("zero_bandwidth_base", _base(bandwidth=0), "calibration.bandwidth"),
    ("str_flops_base", _base(matmul_flops="1e11"), "calibration.matmul_flops"),
    ("nan_overhead_base", _base(overhead_s=float("nan")), "calibration.overhead_s"),
    ("garbage_base", _set("base", value="{"), "base"),
    ("dict_base", _set("base", value={"coef": []}), "base"),
    ("garbage_fallback", _set("fallback", value="{"), "fallback"),
    ("list_fallback", _set("fallback", value=[1]), "fallback"),
    ("zero_spread", _set("uncertain_spread", value=0), "uncertain_spread"),
    ("str_spread", _set("uncertain_spread", value="0.1"), "uncertain_spread"),
    ("inf_spread", _set("uncertain_spread", value=float("inf")), "uncertain_spread"),
]


def _write_meta(path: Path, edit) -> None:
    meta = json.loads((path / "model.json").read_text())
    (path / "model.json").write_text(json.dumps(edit(meta)))


@pytest.mark.parametrize("edit,field", [c[1:] for c in META_CASES], ids=[c[0] for c in META_CASES])
def test_a_corrupt_metadata_field_is_a_weights_error_naming_it(weights, edit, field):
    _write_meta(weights, edit)
    before = snapshot(weights)
    with pytest.raises(WeightsError) as info:
        load_checkpoint(weights, backend="cpu")
    message = str(info.value)
    assert str(weights / "model.json") in message and field in message
    assert "superopt train" in message
    assert snapshot(weights) == before  # a failed load changes nothing on disk


@pytest.mark.parametrize(
    "edit,field",
    [c[1:] for c in META_CASES if c[0] in ("str_width", "negative_width", "str_nan_offset",
                                           "huge_ensemble", "zero_bandwidth_base")],
    ids=["str_width", "negative_width", "str_nan_offset", "huge_ensemble", "zero_bandwidth_base"],
)  # fmt: skip
def test_a_corrupt_metadata_field_falls_back_to_the_analytical_model(weights, edit, field):
    _write_meta(weights, edit)
    before = snapshot(weights)
    with pytest.raises(WeightsError, match=field):
        superopt.predict_runtime(f, *ARGS, weights=weights)
    seconds = superopt.predict_runtime(f, *ARGS, weights=weights, fallback=True)
    assert seconds.model == "analytical" and math.isfinite(seconds) and seconds > 0
    assert "learned model unavailable" in seconds.note and field in seconds.note
    # The fitted analytical model next to the weights (intact here) is the one used.
    assert float(seconds) == float(superopt.predict_runtime(f, *ARGS, model="analytical",
                                                            weights=default_weights()))  # fmt: skip
    assert snapshot(weights) == before


def test_model_json_that_is_a_directory_is_a_weights_error(weights):
    (weights / "model.json").unlink()
    (weights / "model.json").mkdir()
    with pytest.raises(WeightsError, match=r"model\.json is not a readable.*IsADirectoryError"):
        load_checkpoint(weights)
    seconds = superopt.predict_runtime(f, *ARGS, weights=weights, fallback=True)
    assert seconds.model == "analytical" and "IsADirectoryError" in seconds.note
    assert (weights / "model.json").is_dir() and (weights / "model.eqx").is_file()


def test_the_cases_that_already_failed_cleanly_still_do(weights, tmp_path):
    # Garbage and non-object metadata.
    for text, match in [("{", "not a readable"), ("[1, 2]", "not a readable.*list"),
                        ('"x"', "not a readable")]:  # fmt: skip
        (weights / "model.json").write_text(text)
        with pytest.raises(WeightsError, match=match):
            load_checkpoint(weights)
    shutil.copy(default_weights() / "model.json", weights / "model.json")
    assert load_checkpoint(weights, backend="cpu").log_offset < 0
    # Wrong and missing backend, another feature layout.
    with pytest.raises(WeightsError, match=r"backend 'cpu'.*not 'tpu'"):
        load_checkpoint(weights, backend="tpu")
    _write_meta(weights, _drop("backend"))
    with pytest.raises(WeightsError, match="backend None"):
        load_checkpoint(weights, backend="cpu")
    _write_meta(weights, _set("num_features", value=3))
    with pytest.raises(WeightsError, match="another feature layout"):
        load_checkpoint(weights)
    # Missing files.
    with pytest.raises(WeightsError, match="no cost-model weights"):
        load_checkpoint(tmp_path / "nowhere")
    (weights / "model.eqx").unlink()
    with pytest.raises(WeightsError, match="no cost-model weights"):
        load_checkpoint(weights)


# --- corrupt or mismatched model.eqx ----------------------------------------------------------


@pytest.mark.parametrize(
    "data,match",
    [(b"", "corrupt"), (b"not weights", "corrupt"), (None, "corrupt")],
    ids=["empty", "garbage", "truncated"],
)
def test_a_corrupt_leaves_file_is_a_weights_error(weights, data, match):
    leaves = weights / "model.eqx"
    leaves.write_bytes(leaves.read_bytes()[:1000] if data is None else data)
    before = snapshot(weights)
    with pytest.raises(WeightsError, match=match):
        load_checkpoint(weights)
    assert snapshot(weights) == before


@pytest.mark.parametrize(
    "key,value,match",
    [("width", 32, r"leaf \.network\..*shape"), ("num_layers", 2, r"leaf \.network\..*shape"),
     ("ensemble", 4, r"leaf \.members\[2\]"), ("ensemble", 2, "more arrays than the 2 network")],
)  # fmt: skip
def test_a_config_that_does_not_match_the_weights_is_a_weights_error(weights, key, value, match):
    _write_meta(weights, _set("config", key, value=value))
    with pytest.raises(WeightsError, match=f"does not match .*{match}"):
        load_checkpoint(weights)


def test_trailing_data_in_the_leaves_file_is_a_weights_error(tmp_path):
    path, _ = _tiny(tmp_path)
    with open(path / "model.eqx", "ab") as out:
        out.write(b"\x00" * 100)
    with pytest.raises(WeightsError, match="more arrays than"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "where,value,match",
    [(lambda m: m.network.node_head.weight, np.nan, r"\.network\.node_head\.weight.*non-finite"),
     (lambda m: m.feat_mean, np.inf, r"\.feat_mean.*non-finite"),
     (lambda m: m.feat_std, 0.0, "feat_std"),
     (lambda m: m.feat_std, -1.0, "feat_std")],
    ids=["nan_weight", "inf_feat_mean", "zero_feat_std", "negative_feat_std"],
)  # fmt: skip
def test_non_finite_weights_or_normalization_are_a_weights_error(tmp_path, where, value, match):
    path, model = _tiny(tmp_path)
    bad = eqx.tree_at(where, model, replace_fn=lambda a: a * 0 + np.asarray(value, a.dtype))
    eqx.tree_serialise_leaves(path / "model.eqx", bad)
    with pytest.raises(WeightsError, match=match):
        load_checkpoint(path)


def test_a_feature_normalization_of_another_length_is_a_weights_error(tmp_path):
    path, model = _tiny(tmp_path)
    bad = eqx.tree_at(lambda m: m.feat_std, model, np.ones(NUM_FEATURES + 1, np.float32))
    eqx.tree_serialise_leaves(path / "model.eqx", bad)
    with pytest.raises(WeightsError, match=rf"\.feat_std.*shape \({NUM_FEATURES + 1},\)"):
        load_checkpoint(path)


def test_a_pickled_leaf_is_not_unpickled(tmp_path):
    path, _ = _tiny(tmp_path)
    with open(path / "model.eqx", "wb") as out:
        np.save(out, np.asarray([object()], dtype=object), allow_pickle=True)
    with pytest.raises(WeightsError, match="corrupt"):
        load_checkpoint(path)


# --- saving ----------------------------------------------------------------------------------


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path, model = _tiny(tmp_path)
    before = snapshot(path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(eqx, "tree_serialise_leaves", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, TrainConfig(width=8, embed_dim=4, num_layers=1))
    monkeypatch.undo()
    assert snapshot(path) == before and sorted(p.name for p in path.iterdir()) == [
        "model.eqx",
        "model.json",
    ]
    assert np.allclose(load_checkpoint(path).score_programs(_graphs()),
                       model.score_programs(_graphs()))  # fmt: skip


# --- the analytical model's JSON ---------------------------------------------------------------

GOOD = json.loads((default_weights() / "analytical.json").read_text())


def _analytical(edit):
    data = json.loads(json.dumps(GOOD))
    edit(data)
    return json.dumps(data)


ANALYTICAL_CASES = [
    ("zero_bandwidth", lambda d: d["calibration"].update(bandwidth=0), "calibration.bandwidth"),
    ("negative_bandwidth", lambda d: d["calibration"].update(bandwidth=-1e9),
     "calibration.bandwidth"),
    ("str_bandwidth", lambda d: d["calibration"].update(bandwidth="5e10"),
     "calibration.bandwidth"),
    ("inf_flops", lambda d: d["calibration"].update(matmul_flops=float("inf")),
     "calibration.matmul_flops"),
    ("zero_transcendentals", lambda d: d["calibration"].update(transcendentals=0),
     "calibration.transcendentals"),
    ("negative_overhead", lambda d: d["calibration"].update(overhead_s=-1.0),
     "calibration.overhead_s"),
    ("int_backend", lambda d: d["calibration"].update(backend=3), "calibration.backend"),
    ("extra_calibration_field", lambda d: d["calibration"].update(colour=1), "calibration"),
    ("missing_calibration_field", lambda d: d["calibration"].pop("bandwidth"), "calibration"),
    ("missing_calibration", lambda d: d.pop("calibration"), "calibration"),
    ("short_coef", lambda d: d.update(coef=d["coef"][:5]), "coef"),
    ("str_coef", lambda d: d["coef"].__setitem__(0, "nan"), r"coef\[0\]"),
    ("nan_coef", lambda d: d["coef"].__setitem__(2, float("nan")), r"coef\[2\]"),
    ("negative_coef", lambda d: d["coef"].__setitem__(1, -1.0), r"coef\[1\]"),
    ("bad_loop_bytes", lambda d: d.update(loop_bytes="xla"), "loop_bytes"),
    ("list_loop_bytes", lambda d: d.update(loop_bytes=["estimate"]), "loop_bytes"),
]  # fmt: skip


@pytest.mark.parametrize(
    "edit,field", [c[1:] for c in ANALYTICAL_CASES], ids=[c[0] for c in ANALYTICAL_CASES]
)
def test_a_corrupt_analytical_field_is_a_value_error_naming_it(edit, field):
    assert AnalyticalCostModel.from_json(json.dumps(GOOD)).coef == tuple(GOOD["coef"])
    with pytest.raises(ValueError, match=field):
        AnalyticalCostModel.from_json(_analytical(edit))


def test_analytical_json_that_is_not_an_object_is_a_value_error():
    for text in ("[1]", '"x"', "{", "null"):
        with pytest.raises(ValueError):
            AnalyticalCostModel.from_json(text)


def test_a_corrupt_analytical_json_is_an_error_naming_it_or_a_said_fallback(weights):
    # Fitted with a bandwidth of 0, the roofline would divide by zero.
    (weights / "analytical.json").write_text(
        _analytical(lambda d: d["calibration"].update(bandwidth=0))
    )
    before = snapshot(weights)
    with pytest.raises(WeightsError, match=r"analytical\.json is not a readable.*bandwidth"):
        superopt.predict_runtime(f, *ARGS, model="analytical", weights=weights)
    seconds = superopt.predict_runtime(f, *ARGS, model="analytical", weights=weights, fallback=True)
    assert seconds.model == "analytical" and math.isfinite(seconds) and seconds > 0
    assert "analytical.json" in seconds.note and "without its fit" in seconds.note
    assert seconds == superopt.predict_runtime(f, *ARGS, model=AnalyticalCostModel())
    assert snapshot(weights) == before
    # Falling back from broken learned weights says both.
    (weights / "model.json").write_text("{")
    seconds = superopt.predict_runtime(f, *ARGS, weights=weights, fallback=True)
    assert seconds.model == "analytical"
    assert "learned model unavailable" in seconds.note and "without its fit" in seconds.note


def test_a_folder_without_analytical_json_uses_the_unfitted_roofline(weights):
    (weights / "analytical.json").unlink()
    seconds = superopt.predict_runtime(f, *ARGS, model="analytical", weights=weights)
    assert seconds.note == ""
    assert seconds == superopt.predict_runtime(f, *ARGS, model=AnalyticalCostModel())


def test_a_corrupt_cached_calibration_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPEROPT_CACHE_DIR", str(tmp_path))
    good = calibrate()
    (cached,) = tmp_path.glob("calibration-*.json")
    data = json.loads(cached.read_text())
    cached.write_text(json.dumps({**data, "bandwidth": 0}))
    again = calibrate()
    assert isinstance(again, Calibration) and again.bandwidth > 0
    assert calibrate() == again  # the measurement replaced the corrupt cache
    assert good.backend == again.backend
