"""The learned model: batching, scoring, a smoke training run and checkpoints."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superopt
from costmodel.analytical import Calibration
from costmodel.checkpoint import WeightsError, load_checkpoint, save_checkpoint
from costmodel.config import TrainConfig
from costmodel.dataset import Dataset, Record, split_by_family
from costmodel.features import NUM_FEATURES, OPCODES, featurize_program, featurize_signatures
from costmodel.model import GraphModel, LearnedCostModel, bucket, pack
from costmodel.train import train
from superopt.ir import node_cost


def _graph(n, k, fam):
    if fam in ("a", "b"):

        def f(x, w):
            return jnp.tanh(x @ w)
    else:

        def f(x, w):
            return jnp.exp(x @ w).sum(0)

    program = superopt.trace(f, jnp.ones((n, k)), jnp.ones((k, n))).program
    flops = sum(node_cost(x).flops for x in program.nodes())
    return featurize_program(program), 2e-6 + flops * 1e-10


@pytest.fixture(scope="module")
def tiny_dataset():
    rng = np.random.default_rng(0)
    records = []
    for fam in "abcd":
        for p in range(3):
            for v in range(4):
                g, t = _graph(int(rng.integers(4, 96)), int(rng.integers(4, 96)), fam)
                records.append(Record(fam, f"{fam}{p}", f"v{v}", g, t, 0.01))
    return Dataset.from_records(records, {"backend": "cpu", "device_kind": "cpu"})


def test_pack_pads_to_buckets_and_keeps_graphs_apart(tiny_dataset):
    graphs = tiny_dataset.graphs([0, 1, 2])
    batch = pack(graphs, 4)
    n = sum(g.num_nodes for g in graphs)
    assert batch.node_opcode.shape[0] == bucket(n + 1)
    assert batch.node_mask.sum() == n
    assert set(batch.node_graph[:n].tolist()) == {0, 1, 2}
    assert (batch.node_graph[n:] == 4).all()
    real = batch.edge_mask > 0
    assert (batch.node_graph[batch.edge_src[real]] == batch.node_graph[batch.edge_dst[real]]).all()


def test_scores_do_not_depend_on_batch_neighbours(tiny_dataset):
    model = LearnedCostModel(
        GraphModel(16, 4, 2, key=jax.random.PRNGKey(0)),
        np.zeros(NUM_FEATURES, np.float32),
        np.ones(NUM_FEATURES, np.float32),
        -10.0,
        batch_graphs=4,
    )
    graphs = tiny_dataset.graphs(range(6))
    together = model.score_programs(graphs)
    alone = np.concatenate([model.score_programs([g]) for g in graphs])
    assert np.allclose(together, alone, rtol=1e-4)
    assert (together > 0).all()
    opcodes, feats = featurize_signatures([])
    assert model.score_nodes(opcodes, feats).shape == (0,)


def test_split_is_by_family_never_by_row(tiny_dataset):
    fams, progs = tiny_dataset.family, tiny_dataset.program_id
    train_idx, val_idx, test_idx = split_by_family(tiny_dataset, ("d",))
    assert set(fams[test_idx]) == {"d"}
    assert not set(fams[train_idx]) & {"d"}
    # Three families left: validation holds out whole programs.
    assert len(val_idx) and not set(progs[train_idx]) & set(progs[val_idx])
    assert len(train_idx) + len(val_idx) + len(test_idx) == len(tiny_dataset)
    # Four families left: validation holds out whole families.
    train_idx, val_idx, _ = split_by_family(tiny_dataset, ())
    assert len(val_idx) and not set(fams[train_idx]) & set(fams[val_idx])
    # Named validation families replace the draw; names the dataset lacks are skipped.
    train_idx, val_idx, test_idx = split_by_family(tiny_dataset, ("d",), val_families=("b", "z"))
    assert set(fams[val_idx]) == {"b"} and set(fams[train_idx]) == {"a", "c"}
    assert set(fams[test_idx]) == {"d"}
    drawn = split_by_family(tiny_dataset, ("d",), val_families=("z",))[1]
    assert (drawn == split_by_family(tiny_dataset, ("d",))[1]).all()


def test_training_smoke_reduces_loss_and_round_trips(tiny_dataset, tmp_path):
    config = TrainConfig(width=16, embed_dim=4, num_layers=2, batch_graphs=8, steps=30,
                         eval_every=10, patience=10, learning_rate=5e-3, ensemble=1)  # fmt: skip
    result = train(tiny_dataset, test_families=("d",), config=config, out=tmp_path,
                   progress=False)  # fmt: skip
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    # The baseline counts a loop's bytes as the graph estimates them; the network's base
    # as `config.base_loop_bytes` says.
    assert result.baseline.loop_bytes == "estimate"
    assert result.model.base.loop_bytes == config.base_loop_bytes == "larger"
    best = min(h["val_loss"] for h in result.history)
    line = result.summary()
    assert line.startswith("trained 1 network in ") and f"{best:.4f}" in line
    assert f"{len(result.train_idx)} variants ({len(result.val_idx)} for validation" in line
    # One network has no spread, so nothing to lean on the roofline by.
    assert result.model.fallback is None and "roofline" not in line
    loaded = load_checkpoint(tmp_path, backend="cpu")
    graphs = tiny_dataset.graphs(result.test_idx[:5])
    assert np.allclose(loaded.score_programs(graphs), result.model.score_programs(graphs))
    # The per-node shares are what e-node extraction uses: positive and finite.
    g = graphs[0]
    shares = loaded.score_nodes(g.node_opcode, g.node_feat)
    assert shares.shape == (g.num_nodes,) and np.isfinite(shares).all() and (shares > 0).all()


def test_training_fits_its_roofline_with_the_calibration_the_dataset_records(tiny_dataset):
    # Not this machine's (its microbenchmarks move between runs): training one dataset
    # gives one base anywhere.
    recorded = Calibration(3e10, 2e9, 1e10, 2e-5, "cpu", "cpu")
    meta = dict(tiny_dataset.meta, calibration=dataclasses.asdict(recorded))
    ds = dataclasses.replace(tiny_dataset, meta=meta)
    config = TrainConfig(width=8, embed_dim=4, num_layers=1, batch_graphs=8, steps=2,
                         eval_every=1, ensemble=1)  # fmt: skip
    # Both rooflines are fitted before the network trains: no training step is needed.
    result = train(ds, test_families=("d",), config=config, progress=False, time_limit_s=0.0)
    assert result.baseline.calibration == recorded == result.model.base.calibration
    broken = dict(meta, calibration=dict(meta["calibration"], bandwidth=-1.0))
    with pytest.raises(ValueError, match=r"calibration\.bandwidth"):
        train(dataclasses.replace(ds, meta=broken), test_families=("d",), config=config,
              progress=False)  # fmt: skip


def test_training_on_the_runs_fits_those_labels_and_records_the_dataset(tiny_dataset, tmp_path):
    from costmodel.checkpoint import read_metadata

    # A second run that measured family "a" 4x slower and family "b" 4x faster.
    factor = np.select(
        [tiny_dataset.family == "a", tiny_dataset.family == "b"], [4.0, 0.25], np.nan
    )
    ds = dataclasses.replace(tiny_dataset, repeat_s=factor * tiny_dataset.runtime_s)
    a, b = ds.family == "a", ds.family == "b"
    first = ds.runtime_s
    mean, fastest = ds.runtime_of_runs("mean"), ds.runtime_of_runs("min")
    assert np.allclose(mean[a], 2.0 * first[a]) and np.allclose(mean[b], 0.5 * first[b])
    assert np.allclose(fastest[a], first[a]) and np.allclose(fastest[b], 0.25 * first[b])
    assert (mean[~(a | b)] == first[~(a | b)]).all() and (
        fastest[~(a | b)] == first[~(a | b)]
    ).all()
    with pytest.raises(ValueError, match="'mean', 'min' or 'in_use'"):
        ds.runtime_of_runs("median")
    with pytest.raises(ValueError, match="run_labels is 'first', 'mean', 'min' or 'in_use'"):
        TrainConfig(run_labels="max")
    with pytest.raises(ValueError, match="base_loop_bytes is one of"):
        TrainConfig(base_loop_bytes="xla")

    config = TrainConfig(width=16, embed_dim=4, num_layers=2, batch_graphs=8, steps=2,
                         eval_every=2, learning_rate=5e-3, ensemble=1)  # fmt: skip
    train(ds, test_families=("d",), config=config, out=tmp_path, progress=False)
    assert read_metadata(tmp_path)["dataset_hash"] == ds.content_hash()

    # The fitted roofline sees the labels: against family "a"'s first run, it predicts "a"
    # slower when "a"'s labels doubled (the mean of a 4x slower second run), and faster
    # when they were quartered (the faster of the first and a 4x faster second run).
    def ratio(dataset, labels):
        cfg = dataclasses.replace(config, run_labels=labels)
        # The roofline is fitted before the network trains: no training step is needed.
        fit = train(dataset, test_families=("d",), progress=False, config=cfg,
                    time_limit_s=0.0).baseline  # fmt: skip
        return np.median(fit.score_programs(dataset.graphs(np.flatnonzero(a))) / first[a])

    only_a = np.where(a, 1.0, np.nan)
    slower = dataclasses.replace(ds, repeat_s=4.0 * only_a * first)
    faster = dataclasses.replace(ds, repeat_s=0.25 * only_a * first)
    first_run = ratio(slower, "first")  # the second run is not read: the same fit for both
    assert ratio(slower, "mean") > first_run
    assert ratio(faster, "min") < first_run


def test_in_use_labels_take_the_run_with_the_faults_for_programs_with_large_buffers():
    def lse(columns):
        # h @ w is [256, columns] float32: 32 MiB at 32768 columns (tracing runs nothing).
        program = superopt.trace(
            lambda h, w: jax.nn.logsumexp(h @ w, axis=-1),
            jax.ShapeDtypeStruct((256, 8), jnp.float32),
            jax.ShapeDtypeStruct((8, columns), jnp.float32),
        ).program
        return featurize_program(program)

    large, just_under, small = lse(32768), lse(32767), lse(1024)
    ms = 1e-3
    rows = [  # (program, variant, graph, first run, second run)
        ("faulted_second", "logits", large, 10 * ms, 20 * ms),
        ("faulted_second", "chunked", small, 10 * ms, 11 * ms),
        ("faulted_first", "logits", large, 20 * ms, 10 * ms),
        ("faulted_first", "chunked", small, 11 * ms, 10 * ms),
        ("every_variant_large", "a", large, 10 * ms, 14 * ms),
        ("every_variant_large", "b", large, 12 * ms, 13 * ms),
        ("under_32_mib", "logits", just_under, 1 * ms, 4 * ms),
        ("under_32_mib", "chunked", small, 2 * ms, 2 * ms),
    ]
    ds = Dataset.from_records(
        [Record("f", p, v, g, first, 0.01, repeat_s=second) for p, v, g, first, second in rows]
    )
    assert ds.large_buffers().tolist() == [True, False, True, False, True, True, False, False]
    in_use = ds.runtime_of_runs("in_use") / ms
    # One run per program: the one in which its large-buffer variants were slower than its
    # other variants (or, with no others, slower), at the mean elsewhere.
    assert np.allclose(in_use, [20, 11, 20, 11, 14, 13, 2, 2])
    assert np.allclose(ds.runtime_of_runs("mean")[:2] / ms, [np.sqrt(200), np.sqrt(110)])
    assert TrainConfig(run_labels="in_use").run_labels == "in_use"


def test_checkpoints_from_before_run_labels_load_with_the_labels_they_trained_on():
    assert TrainConfig.from_json({"mean_of_runs": True}).run_labels == "mean"
    assert TrainConfig.from_json({"mean_of_runs": False}).run_labels == "first"
    assert TrainConfig.from_json({"run_labels": "min"}).run_labels == "min"


def test_hidden_opcodes_train_the_unknown_embedding_alone(tiny_dataset):
    from costmodel.features import UNKNOWN

    # No weight decay, so that a row without gradient stays exactly where it started.
    config = TrainConfig(width=8, embed_dim=4, num_layers=1, batch_graphs=8, steps=5,
                         eval_every=5, weight_decay=0.0, ensemble=1)  # fmt: skip
    start = GraphModel(8, 4, 1, key=jax.random.PRNGKey(config.seed)).embed.weight
    used = np.unique(np.concatenate([g.node_opcode for g in tiny_dataset.graphs(range(8))]))
    used = used[used != UNKNOWN]

    def moved(dropout):
        net = train(
            tiny_dataset,
            test_families=("d",),
            progress=False,
            config=dataclasses.replace(config, opcode_dropout=dropout),
        ).model.network
        return np.abs(np.asarray(net.embed.weight - start)).max(axis=1)

    # Every opcode hidden: only the UNKNOWN row learns. None hidden: the ops' own rows do.
    everything = moved(1.0)
    assert everything[UNKNOWN] > 0 and (everything[used] == 0).all()
    nothing = moved(0.0)
    assert (nothing[used] > 0).all() and nothing[UNKNOWN] == 0


def test_bad_checkpoints_raise_weights_error(tiny_dataset, tmp_path):
    with pytest.raises(WeightsError, match="no cost-model weights"):
        load_checkpoint(tmp_path / "missing")
    config = TrainConfig(width=8, embed_dim=4, num_layers=1)
    model = LearnedCostModel(
        GraphModel(8, 4, 1, key=jax.random.PRNGKey(0)),
        np.zeros(NUM_FEATURES, np.float32),
        np.ones(NUM_FEATURES, np.float32),
    )
    save_checkpoint(tmp_path, model, config, tiny_dataset)
    assert load_checkpoint(tmp_path, backend="cpu").log_offset == 0.0
    with pytest.raises(WeightsError, match="backend 'cpu'"):
        load_checkpoint(tmp_path, backend="tpu")
    meta = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**meta, "trained_opcodes": "sin"}))
    with pytest.raises(WeightsError, match="trained_opcodes is not a list"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(meta))
    (tmp_path / "model.eqx").write_bytes(b"not weights")
    with pytest.raises(WeightsError, match="corrupt"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.json").write_text("{")
    with pytest.raises(WeightsError, match="not a readable"):
        load_checkpoint(tmp_path)


def test_scoring_ten_thousand_enodes_is_fast(tiny_dataset):
    import time

    model = LearnedCostModel(
        GraphModel(key=jax.random.PRNGKey(0)),
        np.zeros(NUM_FEATURES, np.float32),
        np.ones(NUM_FEATURES, np.float32),
        -10.0,
    )
    feats = np.concatenate([g.node_feat for g in tiny_dataset.graphs()])
    opcodes = np.concatenate([g.node_opcode for g in tiny_dataset.graphs()])
    reps = -(-10_000 // len(opcodes))
    opcodes, feats = np.tile(opcodes, reps)[:10_000], np.tile(feats, (reps, 1))[:10_000]
    model.score_nodes(opcodes, feats)  # compiles once for this bucket
    start = time.perf_counter()
    scores = model.score_nodes(opcodes, feats)
    assert time.perf_counter() - start < 1.0
    assert scores.shape == (10_000,) and (scores > 0).all()


def test_ensemble_averages_members_in_log_space_and_round_trips(tiny_dataset, tmp_path):
    config = TrainConfig(width=8, embed_dim=4, num_layers=1, batch_graphs=8, steps=10,
                         eval_every=5, ensemble=2)  # fmt: skip
    result = train(tiny_dataset, test_families=("d",), config=config, out=tmp_path,
                   progress=False)  # fmt: skip
    model = result.model
    assert len(model.networks) == 2
    graphs = tiny_dataset.graphs(result.test_idx[:4])
    singles = [
        LearnedCostModel(net, model.feat_mean, model.feat_std, model.log_offset, 8, model.base)
        for net in model.networks
    ]
    alone = np.stack([np.log(m.score_programs(graphs)) for m in singles])
    # Members start from different initializations, so they disagree; the ensemble is the
    # geometric mean of their predictions (where it does not lean on its fallback).
    assert not np.allclose(alone[0], alone[1])
    plain = dataclasses.replace(model, fallback=None)
    assert np.allclose(np.log(plain.score_programs(graphs)), alone.mean(0), atol=1e-5)
    # Their disagreement is the spread: the standard deviation of their log predictions.
    spread = model.spread(graphs)
    assert np.allclose(spread, np.expm1(alone.std(0)), atol=1e-4) and (spread > 0).all()
    assert np.isnan(singles[0].spread(graphs)).all()  # one network disagrees with no one
    both = model.score_with_spread(graphs)  # the two from one pass of the networks
    assert np.array_equal(both[0], model.score_programs(graphs))
    assert np.array_equal(both[1], spread)
    loaded = load_checkpoint(tmp_path, backend="cpu")
    assert len(loaded.networks) == 2
    assert np.allclose(loaded.score_programs(graphs), model.score_programs(graphs))
    # The ops of the training programs are recorded; another op is named as untrained.
    trained = {OPCODES[i] for g in tiny_dataset.graphs(result.train_idx) for i in g.node_opcode}
    assert set(model.trained_opcodes) == trained and loaded.trained_opcodes == model.trained_opcodes
    sin = featurize_program(superopt.trace(lambda x: jnp.sin(x) @ x, jnp.ones((4, 4))).program)
    assert loaded.untrained_opcodes(sin) == ["sin"] and loaded.untrained_opcodes(graphs[0]) == []
    assert singles[0].trained_opcodes is None and singles[0].untrained_opcodes(sin) == []
    g = graphs[0]
    assert np.allclose(
        loaded.score_nodes(g.node_opcode, g.node_feat),
        model.score_nodes(g.node_opcode, g.node_feat),
    )
    # The fitted roofline is what the ensemble leans on beyond the largest spread it has
    # on the validation programs; the checkpoint keeps both.
    assert model.fallback is result.baseline and len(result.val_idx) > 0
    assert model.uncertain_spread == pytest.approx(
        float(model.spread(tiny_dataset.graphs(result.val_idx)).max())
    )
    assert loaded.fallback == model.fallback
    assert loaded.uncertain_spread == pytest.approx(model.uncertain_spread)
    assert f"by more than {model.uncertain_spread:.1%} (their most on validation)" in (
        result.summary()
    )


def test_an_ensemble_leans_on_its_fallback_as_far_as_its_networks_disagree(tiny_dataset):
    from costmodel.analytical import AnalyticalCostModel, Calibration

    config = TrainConfig(width=8, embed_dim=4, num_layers=1, batch_graphs=8, steps=4,
                         eval_every=4, ensemble=2)  # fmt: skip
    model = train(tiny_dataset, config=config, progress=False, base=None).model
    assert model.fallback is None  # no roofline to lean on
    graphs = tiny_dataset.graphs(range(6))
    alone = model.score_programs(graphs)
    spread = model.spread(graphs)
    roofline = AnalyticalCostModel(Calibration(1e11, 1e9, 1e10, 1e-5, "cpu", "cpu"))
    other = roofline.score_programs(graphs)
    assert not np.allclose(np.log(alone), np.log(other), atol=0.1)
    # Below the threshold the networks decide alone; above it their weight is the
    # threshold over the spread, and the rest is the fallback's (in log seconds).
    threshold = float(np.median(spread))
    leaning = dataclasses.replace(model, fallback=roofline, uncertain_spread=threshold)
    weight = np.minimum(1.0, threshold / spread)
    assert (weight < 1).any() and (weight == 1).any()
    assert np.array_equal(leaning.learned_weight(spread), weight)
    expected = np.exp(weight * np.log(alone) + (1 - weight) * np.log(other))
    assert np.allclose(leaning.score_programs(graphs), expected, rtol=1e-6)
    seconds, same_spread = leaning.score_with_spread(graphs)
    assert np.array_equal(seconds, leaning.score_programs(graphs))
    assert np.array_equal(same_spread, spread)
    # A single network has no spread, so it never leans; nor does any model without one.
    single = dataclasses.replace(leaning, members=())
    assert np.array_equal(single.learned_weight(single.spread(graphs)), np.ones(len(graphs)))
    assert np.allclose(single.score_programs(graphs),
                       dataclasses.replace(single, fallback=None).score_programs(graphs))  # fmt: skip
    # Extraction's node shares are the networks' own.
    g = graphs[0]
    assert np.array_equal(leaning.score_nodes(g.node_opcode, g.node_feat),
                          model.score_nodes(g.node_opcode, g.node_feat))  # fmt: skip


def test_loop_prior_adds_log_trip_count_to_a_nodes_share():
    import equinox as eqx

    from costmodel.features import FEATURE_INDEX

    net = GraphModel(8, 4, 1, key=jax.random.PRNGKey(0), steps_scale=2.0)
    without = eqx.tree_at(lambda m: m.steps_scale, net, jnp.asarray(0.0))
    opcodes = jnp.zeros(2, jnp.int32)
    feat = jnp.zeros((2, NUM_FEATURES)).at[1, FEATURE_INDEX["log_num_tiles"]].set(1.5)
    _, with_prior = net.encode(opcodes, feat)
    _, plain = without.encode(opcodes, feat)
    # Normalized log-steps times its std: log(steps) on top of what the network predicts.
    assert np.allclose(with_prior - plain, [0.0, 3.0], atol=1e-6)


def test_without_correction_a_graph_is_its_base_plus_node_shares(tiny_dataset):
    net = GraphModel(8, 4, 1, key=jax.random.PRNGKey(0), correction=False)
    batch = pack(tiny_dataset.graphs(range(3)), 4)
    total, additive, node_log = net.parts(batch)
    assert np.allclose(total, additive)
    shares = np.exp(np.asarray(node_log)) * np.asarray(batch.node_mask)
    per_graph = np.bincount(np.asarray(batch.node_graph), shares, minlength=5)[:4]
    assert np.allclose(np.exp(np.asarray(additive)), per_graph, rtol=1e-4)


def test_context_shares_time_the_whole_graph_from_message_passed_nodes(tiny_dataset, tmp_path):
    import equinox as eqx

    key = jax.random.PRNGKey(0)
    plain = GraphModel(8, 4, 2, key=key)
    net = GraphModel(8, 4, 2, key=key, context_shares=True)

    def flat(m):
        """`m` with its head's correction zeroed, to see the shares alone."""
        last = m.head.layers[-1]
        zeros = (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias))
        return eqx.tree_at(lambda m: (m.head.layers[-1].weight, m.head.layers[-1].bias), m, zeros)

    graphs = tiny_dataset.graphs(range(3))
    batch = pack(graphs, 4)
    total, additive, node_log = flat(net).parts(batch)
    plain_total, plain_additive, plain_log = flat(plain).parts(batch)
    # What extraction sums stays each node's own share; the graph's time sums shares read
    # off the message-passed embeddings.
    assert np.allclose(additive, plain_additive) and np.allclose(node_log, plain_log)
    assert np.allclose(plain_total, plain_additive) and not np.allclose(total, additive)
    h = _embed(net, batch)
    shares = np.exp(np.asarray(jax.vmap(net.context_head)(h))) * np.asarray(batch.node_mask)
    per_graph = np.bincount(np.asarray(batch.node_graph), shares, minlength=5)[:4]
    assert np.allclose(np.exp(np.asarray(total)), per_graph, rtol=1e-4)
    # A node's context share moves with its neighbours' features; its own share does not.
    g = graphs[0]
    src, dst = g.edge_index[0]
    feat = g.node_feat.copy()
    feat[src] += 1.0
    batches = [pack([g], 1), pack([dataclasses.replace(g, node_feat=feat)], 1)]
    ctx = [np.asarray(jax.vmap(net.context_head)(_embed(net, b))) for b in batches]
    own = [np.asarray(net.encode(b.node_opcode, b.node_feat)[1]) for b in batches]
    assert ctx[0][dst] != ctx[1][dst] and own[0][dst] == own[1][dst]
    # Trained and saved, the option comes back from the checkpoint.
    config = TrainConfig(width=8, embed_dim=4, num_layers=1, batch_graphs=8, steps=10,
                         eval_every=5, ensemble=1, context_shares=True)  # fmt: skip
    result = train(tiny_dataset, test_families=("d",), config=config, out=tmp_path,
                   progress=False)  # fmt: skip
    loaded = load_checkpoint(tmp_path, backend="cpu")
    assert loaded.network.context_head is not None
    test = tiny_dataset.graphs(result.test_idx[:4])
    assert np.allclose(loaded.score_programs(test), result.model.score_programs(test))


def _embed(net, batch):
    """The node embeddings after message passing."""
    h, _ = net.encode(batch.node_opcode, batch.node_feat)
    for layer in net.layers:
        h = layer(h, batch)
    return h


@pytest.mark.parametrize("rank_loss", ["pairwise", "listmle"])
def test_rank_losses_reward_the_measured_order_and_skip_ties(rank_loss):
    from costmodel.train import _fit_terms

    def rank(pred, target, group, noise):
        args = [jnp.asarray(a, jnp.float32) for a in (pred, target)]
        args += [jnp.asarray(group, jnp.int32), jnp.asarray(noise, jnp.float32)]
        with_rank = _fit_terms(*args, 1.0, 0.1, rank_loss)
        return float(with_rank - _fit_terms(*args, 0.0, 0.1, rank_loss))

    target, group, quiet = [0.0, 1.0, 2.0, 0.0], [0, 0, 0, -1], [0.0] * 4
    ordered = rank([0.0, 1.0, 2.0, 9.0], target, group, quiet)
    reversed_ = rank([2.0, 1.0, 0.0, 9.0], target, group, quiet)
    assert reversed_ > ordered >= 0.0 and reversed_ > 1.0
    # The padding row (group -1) counts for nothing, whatever it predicts.
    assert rank([0.0, 1.0, 2.0, -9.0], target, group, quiet) == pytest.approx(ordered)
    # Runtimes within their noise are ties: no order to reward.
    assert rank([2.0, 1.0, 0.0, 0.0], [0.0, 0.01, 0.02, 0.0], group, [0.5] * 4) == 0.0
    # Two programs in one batch are ranked apart: each is in order, the two together not.
    pred, target = [0.0, 5.0, 1.0, 6.0], [0.0, 1.0, 2.0, 3.0]
    assert rank(pred, target, [0, 0, 1, 1], quiet) == pytest.approx(0.0, abs=1e-6)
    assert rank(pred, target, [0, 0, 0, 0], quiet) > 0.3


def test_an_unknown_rank_loss_is_a_value_error():
    with pytest.raises(ValueError, match="rank_loss is one of"):
        TrainConfig(rank_loss="listnet")
