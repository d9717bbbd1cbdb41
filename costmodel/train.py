"""Training the learned cost model.

Loss = MSE on log runtime + a pairwise hinge rank loss between variants of one program (the
ranking is what the search uses). Batches are whole groups of variants; splits are by family
(`costmodel.dataset.split_by_family`); training stops early when the validation loss has not
improved for `patience` evaluations, keeping the best weights. `TrainConfig.ensemble`
networks are trained this way from different initializations and averaged in log space;
where they disagree by more than they do on any validation program, the prediction leans
on the fitted roofline (`LearnedCostModel.fallback`).
The result is saved with `costmodel.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .checkpoint import WEIGHTS_DIR, device_info, save_checkpoint
from .config import TrainConfig
from .dataset import Dataset, split_by_family
from .features import FEATURE_INDEX, OPCODES, UNKNOWN, GraphArrays
from .model import (
    FEATURE_STD_FLOOR,
    UNCERTAIN_SPREAD,
    Batch,
    GraphModel,
    LearnedCostModel,
    bucket,
    pack,
)


@dataclass
class TrainResult:
    """What training produced: the model, the split, and the metrics along the way."""

    model: LearnedCostModel
    config: TrainConfig
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    # The fitted analytical model (before any scaling into the network's base).
    baseline: Any = None

    def summary(self) -> str:
        """One line for people: the split, the time taken and the best validation loss."""
        best = [
            min(h["val_loss"] for h in self.history if h.get("member", 0) == k)
            for k in sorted({h.get("member", 0) for h in self.history})
        ]
        networks = len(best) or 1
        loss = f"best validation loss {np.mean(best):.4f}" if best else "no validation step"
        lean = ""
        if self.model.fallback is not None:
            lean = (
                f"; where the networks disagree by more than {self.model.uncertain_spread:.1%} "
                "(their most on validation), predictions lean on the fitted roofline"
            )
        return (
            f"trained {networks} network{'s' if networks > 1 else ''} in {self.seconds:.0f} s on "
            f"{len(self.train_idx)} variants ({len(self.val_idx)} for validation, "
            f"{len(self.test_idx)} held out): {loss}{lean}"
        )


def _group_batches(
    groups: np.ndarray, rng: np.random.Generator, batch_graphs: int
) -> list[np.ndarray]:
    """Record indices in batches of whole groups (a group larger than a batch is sampled)."""
    by_group: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    members = list(by_group.values())
    rng.shuffle(members)
    batches: list[np.ndarray] = []
    current: list[int] = []
    for m in members:
        m = list(rng.permutation(m)[:batch_graphs])
        if len(current) + len(m) > batch_graphs:
            batches.append(np.asarray(current))
            current = []
        current.extend(m)
    if current:
        batches.append(np.asarray(current))
    return batches


def _fit_terms(
    pred: jax.Array,
    target: jax.Array,
    group: jax.Array,
    noise: jax.Array,
    rank_weight: float,
    margin: float,
    rank_loss: str = "pairwise",
) -> jax.Array:
    """MSE on log seconds plus a rank loss within each program (`TrainConfig.rank_loss`)."""
    real = (group >= 0).astype(jnp.float32)
    mse = jnp.sum(real * (pred - target) ** 2) / jnp.maximum(jnp.sum(real), 1.0)
    # Pairs (i faster than j) of one program, further apart than their noise.
    same = (group[:, None] == group[None, :]) & (group[:, None] >= 0)
    gap = jnp.maximum(0.01, 0.5 * (noise[:, None] + noise[None, :]))
    pair = same & (target[:, None] < target[None, :] - gap)
    if rank_loss == "listmle":
        # Plackett-Luce, fastest first: i is drawn first among itself and the variants
        # measurably slower than it. Scores are -pred / margin.
        score = -pred / margin
        rest = pair | jnp.eye(len(pred), dtype=bool)
        norm = jax.nn.logsumexp(jnp.where(rest, score[None, :], -jnp.inf), axis=1)
        counted = real * (jnp.sum(same, axis=1) > 1)
        rank = jnp.sum(counted * (norm - score)) / jnp.maximum(jnp.sum(counted), 1.0)
    else:
        # j must be predicted slower than i by the margin.
        hinge = jax.nn.relu(margin - (pred[None, :] - pred[:, None]))
        rank = jnp.sum(hinge * pair) / jnp.maximum(jnp.sum(pair), 1.0)
    return mse + rank_weight * rank


def _loss(
    network: GraphModel,
    batch: Batch,
    target: jax.Array,
    group: jax.Array,
    noise: jax.Array,
    rank_weight: float,
    margin: float,
    additive_weight: float,
    rank_loss: str,
) -> jax.Array:
    total, additive, _ = network.parts(batch)
    terms = (target, group, noise, rank_weight, margin, rank_loss)
    loss = _fit_terms(total, *terms)
    if additive_weight:
        loss += additive_weight * _fit_terms(additive, *terms)
    return loss


@eqx.filter_jit
def _step(network, opt_state, batch, target, group, noise, optimizer, weights, key, dropout):
    if dropout:
        hidden = jax.random.bernoulli(key, dropout, batch.node_opcode.shape)
        opcode = jnp.where(hidden, UNKNOWN, batch.node_opcode)
        batch = dataclasses.replace(batch, node_opcode=opcode)
    loss, grads = eqx.filter_value_and_grad(_loss)(network, batch, target, group, noise, *weights)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(network, eqx.is_array))
    return eqx.apply_updates(network, updates), opt_state, loss


@eqx.filter_jit
def _eval_loss(network, batch, target, group, noise, weights):
    return _loss(network, batch, target, group, noise, *weights)


def _loss_weights(config: TrainConfig) -> tuple[float, float, float, str]:
    return (config.rank_weight, config.rank_margin, config.additive_weight, config.rank_loss)


def _prepare(
    dataset: Dataset,
    idx: np.ndarray,
    config: TrainConfig,
    mean: np.ndarray,
    std: np.ndarray,
    offset: float,
    pad_to: tuple[int, int],
    base_log: np.ndarray | None,
) -> tuple[Batch, jax.Array, jax.Array, jax.Array]:
    b = config.batch_graphs
    batch = pack(
        dataset.graphs(idx),
        b,
        feat_mean=mean,
        feat_std=std,
        pad_to=pad_to,
        base_log=None if base_log is None else base_log[idx],
    )
    target = np.zeros(b, np.float32)
    target[: len(idx)] = np.log(dataset.runtime_s[idx]) - offset
    _, codes = np.unique(dataset.program_id, return_inverse=True)
    group = np.full(b, -1, np.int32)
    group[: len(idx)] = codes[idx]
    # Relative spread -> log-space noise, scaled by how much of it counts as a tie.
    noise = np.zeros(b, np.float32)
    noise[: len(idx)] = config.pair_noise * np.log1p(dataset.spread[idx])
    return batch, jnp.asarray(target), jnp.asarray(group), jnp.asarray(noise)


def train(
    dataset: Dataset,
    *,
    test_families: tuple[str, ...] = (),
    config: TrainConfig = TrainConfig(),
    out: str | Path | None = None,
    progress: bool = True,
    time_limit_s: float | None = None,
    base: Any = "analytical",
) -> TrainResult:
    """Train a `LearnedCostModel` on a dataset of measured variants.

    **Arguments:**

    - `dataset`: the measured variants (`costmodel.dataset.Dataset`).
    - `test_families`: families held out of training and validation (for `evaluate`).
    - `config`: the hyperparameters.
    - `out`: a checkpoint directory to write the best model to, or `None`.
    - `progress`: show a rich progress bar.
    - `time_limit_s`: stop (keeping the best model) after this many seconds.
    - `base`: `"analytical"` fits the analytical roofline on the training split (the
      result's `baseline`) and trains the network to correct a copy fitted with
      `config.base_loop_bytes`; `None` trains the network alone; or a model.

    **Returns:** a `TrainResult` with the best model by validation loss.
    """
    start = time.perf_counter()
    measured = dataset
    if config.run_labels != "first":
        dataset = dataclasses.replace(dataset, runtime_s=dataset.runtime_of_runs(config.run_labels))
    train_idx, val_idx, test_idx = split_by_family(
        dataset, test_families, seed=config.seed, val_families=config.val_families
    )
    if len(train_idx) == 0:
        raise ValueError(
            f"no training records: the dataset has families {dataset.families()} and "
            f"{list(test_families)} are held out; collect more families"
        )
    train_graphs = dataset.graphs(train_idx)
    feats = np.concatenate([g.node_feat for g in train_graphs])
    # Ops outside these keep their initial embeddings (`LearnedCostModel.untrained_opcodes`).
    opcodes = np.unique(np.concatenate([g.node_opcode for g in train_graphs]))
    trained_opcodes = tuple(OPCODES[i] for i in opcodes)
    mean = feats.mean(0).astype(np.float32)
    std = (feats.std(0) + FEATURE_STD_FLOOR).astype(np.float32)
    log_t = np.log(dataset.runtime_s[train_idx])
    # The network's additive part sums node shares, so start from the mean per-graph time.
    offset = float(log_t.mean())
    if isinstance(base, str) and base == "analytical":
        from .analytical import AnalyticalCostModel, dataset_calibration

        fit_idx = np.concatenate([train_idx, val_idx])
        graphs, runtimes = dataset.graphs(fit_idx), dataset.runtime_s[fit_idx]
        calib = dataset_calibration(dataset.meta)
        baseline = AnalyticalCostModel(calib).fit(graphs, runtimes)
        base = baseline
        if config.base_loop_bytes != baseline.loop_bytes:
            base = AnalyticalCostModel(calib, loop_bytes=config.base_loop_bytes).fit(
                graphs, runtimes
            )
    else:
        baseline = base
    if base is not None and config.base_quantile < 1.0 and hasattr(base, "scaled"):
        # The network adds non-negative shares to the base, so the base is scaled down
        # to a lower bound of the training runtimes: room for the shares to say which
        # variant is slower.
        ratio = dataset.runtime_s[train_idx] / base.score_programs(dataset.graphs(train_idx))
        base = base.scaled(min(1.0, float(np.quantile(ratio, config.base_quantile))))
    base_log = None
    if base is not None:
        base_log = np.log(np.maximum(base.score_programs(dataset.graphs()), 1e-12)) - offset
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, min(100, config.steps // 10 + 1), config.steps
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=config.weight_decay)
    )
    rng = np.random.default_rng(config.seed)
    # One padded size for every batch: the largest graphs together (one compilation).
    sizes_n = np.sort(np.diff(dataset.node_offsets))[::-1][: config.batch_graphs]
    sizes_e = np.sort(np.diff(dataset.edge_offsets))[::-1][: config.batch_graphs]
    pad_to = (bucket(int(sizes_n.sum()) + 1), bucket(int(sizes_e.sum()) + 1))
    val_batches = [
        _prepare(dataset, b, config, mean, std, offset, pad_to, base_log)
        for b in _group_batches(dataset.program_id[val_idx], rng, config.batch_graphs)
        for b in [val_idx[b]]
    ]
    deadline = None if time_limit_s is None else start + time_limit_s

    def prepare(idx: np.ndarray) -> tuple[Batch, jax.Array, jax.Array, jax.Array]:
        return _prepare(dataset, idx, config, mean, std, offset, pad_to, base_log)

    networks: list[GraphModel] = []
    history: list[dict[str, float]] = []
    best_losses: list[float] = []
    steps = 0
    # Ensemble members differ only in initialization and batch order (same split); member 0
    # is what a single-network run trains.
    for k in range(max(1, config.ensemble)):
        key = jax.random.PRNGKey(config.seed if k == 0 else config.seed + 7919 * k)
        member_rng = rng if k == 0 else np.random.default_rng([config.seed, k])
        network = GraphModel(
            config.width,
            config.embed_dim,
            config.num_layers,
            key=key,
            steps_scale=float(std[FEATURE_INDEX["log_num_tiles"]]) if config.loop_prior else 0.0,
            correction=config.correction,
            context_shares=config.context_shares,
        )
        best_loss, network, member_history = _fit_network(
            network, optimizer, train_idx, dataset.program_id, prepare, val_batches,
            config, member_rng, deadline, progress,
            f"member {k + 1}/{config.ensemble} " if config.ensemble > 1 else "",
        )  # fmt: skip
        networks.append(network)
        history.extend({**h, "member": k} for h in member_history)
        best_losses.append(best_loss)
        steps += int(member_history[-1]["step"]) if member_history else 0
        if deadline is not None and time.perf_counter() > deadline:
            break
    model = LearnedCostModel(
        networks[0],
        mean,
        std,
        offset,
        config.batch_graphs,
        base,
        tuple(networks[1:]),
        trained_opcodes,
    )
    if baseline is not None and len(networks) > 1:
        model = _with_fallback(model, baseline, dataset.graphs(val_idx))
    result = TrainResult(
        model,
        config,
        train_idx,
        val_idx,
        test_idx,
        history,
        time.perf_counter() - start,
        baseline,
    )
    if out is not None:
        save_checkpoint(
            out,
            model,
            config,
            measured,
            metrics={"best_val_loss": float(np.mean(best_losses)), "steps": steps},
            extra={"test_families": list(test_families)},
        )
    return result


def _with_fallback(
    model: LearnedCostModel, fallback: Any, val_graphs: list[GraphArrays]
) -> LearnedCostModel:
    """`model` leaning on `fallback` where its networks disagree by more than they do on
    any validation program (`UNCERTAIN_SPREAD` when there are none)."""
    spread = model.spread(val_graphs) if val_graphs else np.zeros(0)
    largest = float(np.max(spread, initial=0.0))
    threshold = largest if np.isfinite(largest) and largest > 0 else UNCERTAIN_SPREAD
    return dataclasses.replace(model, fallback=fallback, uncertain_spread=threshold)


def _fit_network(
    network: GraphModel,
    optimizer: optax.GradientTransformation,
    train_idx: np.ndarray,
    program_id: np.ndarray,
    prepare: Any,
    val_batches: list,
    config: TrainConfig,
    rng: np.random.Generator,
    deadline: float | None,
    progress: bool,
    label: str,
) -> tuple[float, GraphModel, list[dict[str, float]]]:
    """Train one network with early stopping; returns (best val loss, best network, history)."""
    opt_state = optimizer.init(eqx.filter(network, eqx.is_array))
    # The hidden opcodes' key (drawn only when some are hidden: the batch order stays
    # what it is without).
    key = jax.random.PRNGKey(int(rng.integers(2**31))) if config.opcode_dropout else None
    best = (np.inf, network)
    history: list[dict[str, float]] = []
    bad = 0
    step = 0
    running = 0.0

    def out_of_time() -> bool:
        return deadline is not None and time.perf_counter() > deadline

    with _progress(progress) as bar:
        task = bar.add_task(f"{label}training", total=config.steps) if bar else None
        while step < config.steps and bad < config.patience and not out_of_time():
            for local in _group_batches(program_id[train_idx], rng, config.batch_graphs):
                batch, target, group, noise = prepare(train_idx[local])
                network, opt_state, loss = _step(
                    network, opt_state, batch, target, group, noise, optimizer,
                    _loss_weights(config), None if key is None else jax.random.fold_in(key, step),
                    config.opcode_dropout,
                )  # fmt: skip
                running = 0.9 * running + 0.1 * float(loss) if step else float(loss)
                step += 1
                if bar:
                    bar.update(task, advance=1, description=f"{label}training loss {running:.3f}")
                if step % config.eval_every == 0 or step == config.steps:
                    val = _mean_loss(network, val_batches, config) if val_batches else running
                    history.append({"step": step, "train_loss": running, "val_loss": val})
                    if val < best[0]:
                        best, bad = (val, network), 0
                    else:
                        bad += 1
                if step >= config.steps or bad >= config.patience or out_of_time():
                    break
    network = best[1] if np.isfinite(best[0]) else network
    return float(best[0]), network, history


def _mean_loss(network: GraphModel, batches: list, config: TrainConfig) -> float:
    losses = [
        float(_eval_loss(network, b, t, g, n, _loss_weights(config))) for b, t, g, n in batches
    ]
    return float(np.mean(losses))


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, Progress, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(), TimeRemainingColumn())


def run_training(
    dataset_path: str | Path,
    out: str | Path | None = None,
    *,
    test_families: tuple[str, ...] | None = None,
    config: TrainConfig = TrainConfig(),
    time_limit_s: float | None = 25 * 60,
    progress: bool = True,
) -> TrainResult:
    """Train the learned model and fit the analytical baseline from a dataset file (what
    `superopt train` runs).

    **Arguments:**

    - `dataset_path`: an `.npz` written by `superopt._corpus.export`.
    - `out`: the checkpoint directory (default `costmodel/weights/<backend>`); the fitted
      analytical model is written next to it as `analytical.json`.
    - `test_families`: families held out (default `evaluate.DEFAULT_TEST_FAMILIES`).
    - `config`: hyperparameters.
    - `time_limit_s`: stop training after this long, keeping the best model.
    - `progress`: show a progress bar.

    **Returns:** the `TrainResult`.
    """
    from .analytical import AnalyticalCostModel, dataset_calibration
    from .evaluate import DEFAULT_TEST_FAMILIES

    dataset = Dataset.load(dataset_path)
    held_out = DEFAULT_TEST_FAMILIES if test_families is None else tuple(test_families)
    held_out = tuple(f for f in held_out if f in dataset.families())
    backend = dataset.meta.get("backend") or device_info()["backend"]
    out = WEIGHTS_DIR / backend if out is None else Path(out)
    result = train(
        dataset,
        test_families=held_out,
        config=config,
        out=out,
        progress=progress,
        time_limit_s=time_limit_s,
    )
    analytical = result.baseline
    if analytical is None:
        fit_idx = np.concatenate([result.train_idx, result.val_idx])
        analytical = AnalyticalCostModel(dataset_calibration(dataset.meta)).fit(
            dataset.graphs(fit_idx), dataset.runtime_s[fit_idx]
        )
    (Path(out) / "analytical.json").write_text(analytical.to_json())
    return result
