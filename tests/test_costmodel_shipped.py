"""The shipped corpus and CPU weights: the dataset card's claims hold for the files shipped."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from costmodel.checkpoint import WEIGHTS_DIR, load_checkpoint, read_metadata
from costmodel.dataset import Dataset, split_by_family
from costmodel.evaluate import DEFAULT_TEST_FAMILIES, SECOND_RUN, evaluate, task_metrics
from costmodel.features import OPCODES

DATA = Path(__file__).parent.parent / "costmodel" / "data" / "corpus-cpu.npz"
CARD = WEIGHTS_DIR / "CARD.md"


@pytest.fixture(scope="module")
def shipped():
    return Dataset.load(DATA)


def test_shipped_dataset_meets_the_corpus_bar(shipped):
    summary = shipped.summary()
    assert summary["programs"] >= 300 and summary["families"] >= 8
    assert summary["variants"] >= 5000 and summary["tile_groups"] > 0
    assert summary["backend"] == "cpu"
    # Variant groups are equivalent programs: no deliberately different `near_*` variants.
    assert not any(v.startswith("near_") for v in shipped.variant_id.tolist())
    assert (shipped.runtime_s > 0).all() and np.isfinite(shipped.spread).all()
    assert DATA.stat().st_size < 8 * 2**20


def test_card_states_the_shipped_numbers(shipped):
    card = CARD.read_text()
    summary = shipped.summary()
    for key, label in [("programs", "programs"), ("variants", "variants"),
                       ("executables", "distinct executables"),
                       ("tile_groups", "tile groups")]:  # fmt: skip
        match = re.search(rf"\| {label}[^|]*\| ([\d,]+)", card)
        assert match, f"the card has no '{label}' row"
        assert int(match.group(1).replace(",", "")) == summary[key]
    assert f"{summary['median_relative_spread']:.3f}" in card


def test_card_states_the_second_run_of_the_held_out_programs(shipped):
    # Every held-out record was measured a second time; the card's row is what evaluate says.
    _, _, test_idx = split_by_family(shipped, DEFAULT_TEST_FAMILIES)
    assert np.isfinite(shipped.repeat_s[test_idx]).all()
    table = evaluate(shipped, {}, test_idx, DEFAULT_TEST_FAMILIES).table()
    row = next(line for line in table.splitlines() if line.startswith(f"| all | {SECOND_RUN} |"))
    assert row in CARD.read_text()


def test_shipped_weights_were_trained_on_the_shipped_dataset(shipped):
    meta = read_metadata(WEIGHTS_DIR / "cpu")
    assert meta["dataset_hash"] == shipped.content_hash()
    assert tuple(meta["test_families"]) == DEFAULT_TEST_FAMILIES
    assert json.loads(meta["base"])["coef"]  # the fitted roofline it corrects
    # The ops it was trained on are those of the training split's programs.
    config = meta["config"]
    train_idx, _, _ = split_by_family(shipped, DEFAULT_TEST_FAMILIES, seed=config["seed"],
                                      val_families=config["val_families"])  # fmt: skip
    opcodes = np.unique(np.concatenate([g.node_opcode for g in shipped.graphs(train_idx)]))
    assert meta["trained_opcodes"] == [OPCODES[i] for i in opcodes]


def test_shipped_model_ranks_held_out_tiles(shipped):
    # A cheap version of `run_evaluation`: the tile groups of one held-out family.
    model = load_checkpoint(WEIGHTS_DIR / "cpu", backend="cpu")
    _, _, test_idx = split_by_family(shipped, DEFAULT_TEST_FAMILIES)
    idx = test_idx[shipped.family[test_idx] == "xent_bias"][:120]
    metrics = task_metrics(shipped, idx, model.score_programs(shipped.graphs(idx)))
    assert metrics.tile_groups >= 1 and metrics.tile_tau > 0.5


def test_shipped_weights_pass_the_loaders_checks():
    # The checks that turn corrupt weights into a `WeightsError` accept the shipped files:
    # every array float32 and finite, the fitted roofline's rates positive.
    import equinox as eqx
    import jax

    from costmodel.analytical import AnalyticalCostModel

    model = load_checkpoint(WEIGHTS_DIR / "cpu", backend="cpu")
    arrays = [np.asarray(a) for a in jax.tree_util.tree_leaves(model) if eqx.is_array(a)]
    assert arrays and {a.dtype for a in arrays} == {np.dtype(np.float32)}
    assert all(np.isfinite(a).all() for a in arrays) and (np.asarray(model.feat_std) > 0).all()
    fitted = AnalyticalCostModel.from_json((WEIGHTS_DIR / "cpu" / "analytical.json").read_text())
    calib = fitted.calibration
    assert min(calib.matmul_flops, calib.transcendentals, calib.bandwidth) > 0
    assert model.base is not None and model.base.calibration == calib
    # The shipped corpus records that calibration: training it again fits the same base.
    assert Dataset.load(DATA).meta["calibration"] == dataclasses.asdict(calib)
