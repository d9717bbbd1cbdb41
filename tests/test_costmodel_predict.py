"""`superopt.predict_runtime` with shipped, missing, corrupt and foreign weights."""

from __future__ import annotations

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superopt
from costmodel.checkpoint import WeightsError, load_analytical, load_checkpoint
from superopt._predict import default_weights


def f(x, w):
    return jnp.tanh(x @ w).sum()


ARGS = (jnp.ones((64, 128)), jnp.ones((128, 256)))


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "weights"
    shutil.copytree(default_weights(), path)
    return path


def test_shipped_weights_predict_a_positive_time():
    seconds = superopt.predict_runtime(f, *ARGS)
    assert seconds.model == "learned" and 0 < seconds < 10 and seconds.note == ""
    analytical = superopt.predict_runtime(f, *ARGS, model="analytical")
    assert analytical.model == "analytical" and 0 < analytical < 10


def test_a_prediction_says_which_loops_it_cannot_see_into():
    def rnn(h, w, xs):
        return jax.lax.scan(lambda h, x: (jnp.tanh(h @ w + x), None), h, xs)[0]

    def twice(h, w, xs):
        return rnn(rnn(h, w, xs), w, xs)

    args = (jnp.ones((8, 16)), jnp.ones((16, 16)), jnp.ones((5, 8, 16)))
    for model in ("learned", "analytical"):
        seconds = superopt.predict_runtime(rnn, *args, model=model)
        assert seconds > 0 and "calls scan, whose inner computation" in seconds.note
        assert "left out of this prediction" in seconds.note
    assert "calls scan x2, whose" in superopt.predict_runtime(twice, *args).note


def test_a_prediction_says_when_the_learned_model_is_on_unfamiliar_ground():
    # No training program has erf: its embedding is each network's random start, so the
    # three networks disagree. A tanh matmul is familiar.
    familiar = superopt.predict_runtime(f, *ARGS)
    assert familiar.spread < 0.1 and familiar.note == ""
    erf = superopt.predict_runtime(lambda x: jax.scipy.special.erf(x).sum(0), jnp.ones((512, 256)))
    assert "trained on has erf: its cost is a guess" in erf.note
    assert erf.spread > 0.1 and "networks disagree on this program" in erf.note
    # ... so the time leans on the calibrated roofline, as far as they disagree.
    model = load_checkpoint(default_weights())
    weight = float(model.learned_weight(np.asarray([erf.spread]))[0])
    assert 0 < weight < 1 and f"{weight:.0%} theirs" in erf.note
    assert model.fallback == load_analytical(default_weights())
    assert f"spread={erf.spread:.3f}" in repr(erf)
    analytical = superopt.predict_runtime(f, *ARGS, model="analytical")
    assert math.isnan(analytical.spread) and "spread" not in repr(analytical)


def test_a_dtype_no_training_program_had_is_named_and_not_amplified():
    # No training program has float16: its one-hot column was constant in training, so
    # its deviation once read as a thousandfold input (a chain predicted at 10^6 s).
    def chain(a, b, v):
        return (a @ b) @ v

    times = {}
    for dtype in (jnp.float32, jnp.float16):
        args = [jnp.ones(shape, dtype) for shape in ((256, 256), (256, 256), (256, 2))]
        times[dtype] = superopt.predict_runtime(chain, *args)
    assert times[jnp.float32].note == ""
    assert "trained on has float16 values: its cost is a guess" in times[jnp.float16].note
    assert 0.1 < times[jnp.float16] / times[jnp.float32] < 10


def test_bigger_work_is_predicted_slower_by_the_analytical_model():
    small = superopt.predict_runtime(f, jnp.ones((8, 16)), jnp.ones((16, 8)), model="analytical")
    big = superopt.predict_runtime(f, jnp.ones((512, 512)), jnp.ones((512, 512)),
                                   model="analytical")  # fmt: skip
    assert big > small


def test_missing_weights_raise_or_fall_back(tmp_path):
    with pytest.raises(WeightsError, match="superopt train"):
        superopt.predict_runtime(f, *ARGS, weights=tmp_path / "nowhere")
    seconds = superopt.predict_runtime(f, *ARGS, weights=tmp_path / "nowhere", fallback=True)
    assert seconds.model == "analytical" and "learned model unavailable" in seconds.note
    assert seconds > 0


def test_corrupt_weights_raise_a_clear_error(weights):
    (weights / "model.eqx").write_bytes(b"\x00" * 10)
    with pytest.raises(WeightsError, match="corrupt"):
        superopt.predict_runtime(f, *ARGS, weights=weights)


def test_wrong_backend_weights_raise_a_clear_error(weights):
    meta = json.loads((weights / "model.json").read_text())
    meta["backend"] = "tpu"
    (weights / "model.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="trained on backend 'tpu'"):
        superopt.predict_runtime(f, *ARGS, weights=weights)
    fallback = superopt.predict_runtime(f, *ARGS, weights=weights, fallback=True)
    assert fallback.model == "analytical" and "tpu" in fallback.note


def test_unknown_model_name():
    with pytest.raises(ValueError, match="model must be"):
        superopt.predict_runtime(f, *ARGS, model="magic")
