"""The cost models: an abstract interface, and the learned graph network.

`GraphModel` follows the paper and TpuGraphs: an opcode embedding plus the node features go
through a node MLP; a per-node head gives each node an additive runtime share (this is what
scores e-nodes during extraction); GraphSAGE-style message passing over `edge_index`
(`jax.ops.segment_sum`, both directions), then sum and max pooling and an MLP head add a
whole-graph correction. With a base model (the fitted analytical roofline), the network
learns what the base misses: the prediction is
`log(base + sum_i exp(node_log_i)) + correction`, in log seconds; without one,
`log(sum_i exp(node_log_i)) + correction`. A tiled loop's share is its trip count times a
learned step time (`encode`), and training can fit the additive part on its own too
(`TrainConfig.additive_weight`), so that what extraction sums carries what the model knows.

Graphs are batched by concatenation into one padded graph whose node and edge counts are
rounded up to a power of two, so each bucket compiles once.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from superopt.ir import Node

from .features import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    NUM_CONFIG,
    NUM_FEATURES,
    NUM_OPCODES,
    OPCODES,
    UNKNOWN,
    GraphArrays,
    NodeSignature,
    featurize_signatures,
)

_STEPS_COL = FEATURE_INDEX["log_num_tiles"]


class AbstractCostModel(eqx.Module):
    """A model of runtime: whole programs, and single e-nodes for extraction."""

    @abc.abstractmethod
    def score_programs(self, graphs: Sequence[GraphArrays]) -> np.ndarray:
        """Predicted seconds of each program (`float64[len(graphs)]`)."""

    @abc.abstractmethod
    def score_nodes(
        self, node_opcode: Int[np.ndarray, " n"], node_feat: Float[np.ndarray, "n feat"]
    ) -> np.ndarray:
        """Predicted seconds of each e-node on its own (an additive cost for extraction)."""

    def score_signatures(self, signatures: Sequence[NodeSignature | Node]) -> np.ndarray:
        """Predicted seconds of each e-node signature (or IR node), scored in one batch:
        what extraction writes back as e-node costs."""
        return self.score_nodes(*featurize_signatures(signatures))


@dataclass(frozen=True)
class Batch:
    """Graphs packed into one padded graph (numpy or jax arrays).

    Padding nodes belong to graph `num_graphs` (a dummy segment); padding edges connect
    padding node `nodes - 1` to itself and carry `edge_mask == 0`.
    """

    node_opcode: Int[Array, " nodes"]
    node_feat: Float[Array, "nodes feat"]
    node_graph: Int[Array, " nodes"]
    node_mask: Float[Array, " nodes"]
    edge_src: Int[Array, " edges"]
    edge_dst: Int[Array, " edges"]
    edge_mask: Float[Array, " edges"]
    config: Float[Array, "graphs config"]
    base_log: Float[Array, " graphs"]
    num_graphs: int


jax.tree_util.register_dataclass(
    Batch,
    data_fields=[
        "node_opcode",
        "node_feat",
        "node_graph",
        "node_mask",
        "edge_src",
        "edge_dst",
        "edge_mask",
        "config",
        "base_log",
    ],
    meta_fields=["num_graphs"],
)


_NO_BASE = -1e9


def bucket(n: int, minimum: int = 64) -> int:
    """`n` rounded up to a power of two (at least `minimum`): the static padded size."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def pack(
    graphs: Sequence[GraphArrays],
    num_graphs: int | None = None,
    *,
    feat_mean: np.ndarray | None = None,
    feat_std: np.ndarray | None = None,
    pad_to: tuple[int, int] | None = None,
    base_log: np.ndarray | None = None,
) -> Batch:
    """Concatenate graphs into one padded `Batch` (normalizing node features if given).

    **Arguments:**

    - `graphs`: the programs' arrays.
    - `num_graphs`: the static graph count (more than `len(graphs)` pads with empty graphs).
    - `feat_mean`, `feat_std`: node-feature normalization.
    - `base_log`: the base model's log seconds per graph (minus the model's offset).
    - `pad_to`: fixed `(nodes, edges)` sizes (training pads every batch alike so that it
      compiles once); by default the counts are rounded up to a power of two.

    **Returns:** a `Batch` of numpy arrays with bucketed node and edge counts.
    """
    b = len(graphs) if num_graphs is None else num_graphs
    n_real = sum(g.num_nodes for g in graphs)
    e_real = sum(g.num_edges for g in graphs)
    n, e = bucket(n_real + 1), bucket(e_real + 1)
    if pad_to is not None:
        n, e = max(n, pad_to[0]), max(e, pad_to[1])
    opcode = np.zeros(n, np.int32)
    feat = np.zeros((n, NUM_FEATURES), np.float32)
    graph = np.full(n, b, np.int32)
    src = np.full(e, n - 1, np.int32)
    dst = np.full(e, n - 1, np.int32)
    config = np.zeros((b, NUM_CONFIG), np.float32)
    no = eo = 0
    for i, g in enumerate(graphs):
        k, m = g.num_nodes, g.num_edges
        opcode[no : no + k] = g.node_opcode
        feat[no : no + k] = g.node_feat
        graph[no : no + k] = i
        src[eo : eo + m] = g.edge_index[:, 0] + no
        dst[eo : eo + m] = g.edge_index[:, 1] + no
        config[i] = g.config_feat
        no += k
        eo += m
    if feat_mean is not None and feat_std is not None:
        feat[:no] = (feat[:no] - feat_mean) / feat_std
    node_mask = (np.arange(n) < no).astype(np.float32)
    edge_mask = (np.arange(e) < eo).astype(np.float32)
    base = np.full(b, _NO_BASE, np.float32)
    if base_log is not None:
        base[: len(graphs)] = base_log
    return Batch(opcode, feat, graph, node_mask, src, dst, edge_mask, config, base, b)


class _SAGELayer(eqx.Module):
    linear: eqx.nn.Linear
    norm: eqx.nn.LayerNorm

    def __init__(self, width: int, *, key: PRNGKeyArray):
        self.linear = eqx.nn.Linear(3 * width, width, key=key)
        self.norm = eqx.nn.LayerNorm(width)

    def __call__(self, h: Float[Array, "n w"], batch: Batch) -> Float[Array, "n w"]:
        n = h.shape[0]
        w = batch.edge_mask[:, None]
        # Mean over operands and over users: a node's cost depends on both.
        deg_in = jax.ops.segment_sum(batch.edge_mask, batch.edge_dst, n)
        deg_out = jax.ops.segment_sum(batch.edge_mask, batch.edge_src, n)
        msg_in = jax.ops.segment_sum(h[batch.edge_src] * w, batch.edge_dst, n)
        msg_out = jax.ops.segment_sum(h[batch.edge_dst] * w, batch.edge_src, n)
        msg_in = msg_in / jnp.maximum(deg_in, 1.0)[:, None]
        msg_out = msg_out / jnp.maximum(deg_out, 1.0)[:, None]
        update = jax.vmap(self.linear)(jnp.concatenate([h, msg_in, msg_out], axis=-1))
        return h + jax.nn.gelu(jax.vmap(self.norm)(update))


class GraphModel(eqx.Module):
    """The graph network: node MLP, message passing, pooling, head (log seconds).

    **Arguments:**

    - `width`: hidden width.
    - `embed_dim`: opcode embedding size.
    - `num_layers`: message-passing layers.
    - `key`: a PRNG key.
    - `correction`: whether message passing and pooling add a whole-graph correction
      (`False`: a graph's time is the base plus its nodes' shares).
    - `steps_scale`: the training std of the `log_num_tiles` feature (so that the
      normalized column times it is log(steps)); `0` leaves loops to the network alone.
    - `context_shares`: whether the whole graph's time sums node shares read off the
      message-passed embeddings (a second node head) rather than each node's own share;
      the additive part, which extraction sums, keeps the nodes' own shares.
    """

    embed: eqx.nn.Embedding
    node_mlp: eqx.nn.MLP
    node_head: eqx.nn.Linear
    layers: tuple[_SAGELayer, ...]
    head: eqx.nn.MLP
    steps_scale: Float[Array, ""]
    context_head: eqx.nn.Linear | None = None
    correction: bool = eqx.field(static=True, default=True)

    def __init__(
        self,
        width: int = 64,
        embed_dim: int = 16,
        num_layers: int = 3,
        *,
        key: PRNGKeyArray,
        steps_scale: float = 0.0,
        correction: bool = True,
        context_shares: bool = False,
    ):
        k_embed, k_mlp, k_node, k_head, *k_layers = jax.random.split(key, 4 + num_layers)
        self.embed = eqx.nn.Embedding(NUM_OPCODES, embed_dim, key=k_embed)
        self.node_mlp = eqx.nn.MLP(
            NUM_FEATURES + embed_dim, width, width, 2, activation=jax.nn.gelu, key=k_mlp
        )
        # Node shares start small, so an untrained network predicts about the base.
        node_head = eqx.nn.Linear(width, "scalar", key=k_node)
        self.node_head = eqx.tree_at(lambda m: m.bias, node_head, jnp.asarray(-3.0))
        self.layers = tuple(_SAGELayer(width, key=k) for k in k_layers)
        self.head = eqx.nn.MLP(
            2 * width + NUM_CONFIG, "scalar", width, 2, activation=jax.nn.gelu, key=k_head
        )
        self.steps_scale = jnp.asarray(steps_scale, jnp.float32)
        self.correction = correction
        if context_shares:
            context_head = eqx.nn.Linear(width, "scalar", key=jax.random.fold_in(k_node, 1))
            self.context_head = eqx.tree_at(lambda m: m.bias, context_head, jnp.asarray(-3.0))

    def encode(
        self, node_opcode: Int[Array, " n"], node_feat: Float[Array, "n feat"]
    ) -> tuple[Float[Array, "n w"], Float[Array, " n"]]:
        """Node embeddings and each node's own log-seconds share.

        A tiled loop's share is `log(steps)` plus what the network predicts for one step:
        its time is the trip count times the time of a step, so the network learns step
        times, which carry over between shape regimes (a short-query attention runs many
        cheap steps; training may only have seen fewer, dearer ones).
        """
        x = jnp.concatenate([jax.vmap(self.embed)(node_opcode), node_feat], axis=-1)
        h = jax.vmap(self.node_mlp)(x)
        return h, jax.vmap(self.node_head)(h) + self._log_steps(node_feat)

    def _log_steps(self, node_feat: Float[Array, "n feat"]) -> Float[Array, " n"]:
        # The normalized log-steps column times its training std is log(steps) up to a
        # constant (which the head's bias absorbs).
        return jax.lax.stop_gradient(self.steps_scale) * node_feat[:, _STEPS_COL]

    def __call__(self, batch: Batch) -> tuple[Float[Array, " graphs"], Float[Array, " nodes"]]:
        """`(log seconds of each graph, log seconds of each node's share)`."""
        total, _, node_log = self.parts(batch)
        return total, node_log

    def parts(
        self, batch: Batch
    ) -> tuple[Float[Array, " graphs"], Float[Array, " graphs"], Float[Array, " nodes"]]:
        """`(log seconds of each graph, its additive part alone (the base plus the node
        shares: what extraction sums), log seconds of each node's share)`."""
        b = batch.num_graphs
        h, node_log = self.encode(batch.node_opcode, batch.node_feat)
        seg = batch.node_graph
        additive = jnp.logaddexp(_graph_logsumexp(node_log, batch), batch.base_log)
        if not self.correction:
            return additive, additive, node_log
        for layer in self.layers:
            h = layer(h, batch)
        whole = additive
        if self.context_head is not None:
            # The same sum of shares, each read off a node's message-passed embedding (what
            # XLA fuses it with shows there), with the same loop prior.
            context_log = jax.vmap(self.context_head)(h) + self._log_steps(batch.node_feat)
            whole = jnp.logaddexp(_graph_logsumexp(context_log, batch), batch.base_log)
        mask = batch.node_mask[:, None]
        pooled_sum = jax.ops.segment_sum(h * mask, seg, b + 1)[:b]
        pooled_max = jax.ops.segment_max(jnp.where(mask > 0, h, -1e30), seg, b + 1)[:b]
        pooled_max = jnp.where(pooled_max > -1e29, pooled_max, 0.0)
        count = jnp.maximum(jax.ops.segment_sum(batch.node_mask, seg, b + 1)[:b], 1.0)
        pooled = jnp.concatenate([pooled_sum / count[:, None], pooled_max, batch.config], -1)
        return whole + jax.vmap(self.head)(pooled), additive, node_log


def _graph_logsumexp(node_log: Float[Array, " nodes"], batch: Batch) -> Float[Array, " graphs"]:
    """Per graph of `batch`, the log of the sum of its nodes' `exp(node_log)`."""
    b, seg = batch.num_graphs, batch.node_graph
    masked = jnp.where(batch.node_mask > 0, node_log, -1e30)
    peak = jax.ops.segment_max(masked, seg, b + 1)
    peak = jnp.where(jnp.isfinite(peak) & (peak > -1e29), peak, 0.0)
    total = jax.ops.segment_sum(jnp.exp(masked - peak[seg]) * batch.node_mask, seg, b + 1)
    return (peak + jnp.log(jnp.maximum(total, 1e-30)))[:b]


@eqx.filter_jit
def _forward(network: GraphModel, batch: Batch) -> tuple[Array, Array]:
    return network(batch)


@eqx.filter_jit
def _encode(network: GraphModel, opcode: Array, feat: Array) -> Array:
    return network.encode(opcode, feat)[1]


# An ensemble spread (`LearnedCostModel.spread`) above this marks a prediction as uncertain
# when the weights do not record their own threshold (`LearnedCostModel.uncertain_spread`).
UNCERTAIN_SPREAD = 0.10

# Training scales each node feature by its standard deviation plus this floor, so a column
# constant over the training programs has exactly the floor.
FEATURE_STD_FLOOR = 1e-3


def _feature_words(name: str) -> str:
    if name.startswith("dtype_"):
        return f"{name.removeprefix('dtype_')} values"
    if name.startswith("log_dim"):
        return f"arrays of rank {int(name.removeprefix('log_dim')) + 1} or more"
    if name == "log_tile1":
        return "loops tiled over two dimensions"
    return f"nodes with the feature {name}"


class LearnedCostModel(AbstractCostModel):
    """The trained graph network with the normalization it was trained under.

    **Arguments:**

    - `network`: the `GraphModel`.
    - `feat_mean`, `feat_std`: node-feature normalization (`float32[NUM_FEATURES]`).
    - `log_offset`: added to the network's output to give log seconds.
    - `base`: a model whose prediction the network corrects (`None` for none).
    - `members`: further networks trained like `network` from other initializations; the
      prediction is the mean of all networks' log seconds (an ensemble).
    - `trained_opcodes`: the ops of the programs the networks were trained on (`None`:
      not recorded). Any other op keeps the embedding it was initialized with.
    - `fallback`: a model to lean on where the networks disagree (the fitted roofline);
      `None` for none.
    - `uncertain_spread`: the `spread` above which a prediction is uncertain: training
      sets it to the largest spread of the networks on the validation programs.

    With a `fallback` and more than one network, a program on which the networks disagree
    by more than `uncertain_spread` gets a weighted geometric mean of the two models:
    the networks' weight is `uncertain_spread / spread`, the fallback's the rest. The
    networks agree on programs like those they were trained on and scatter on others (a
    program of a family they never saw), where the roofline, fitted over every family,
    extrapolates better. `score_nodes` (what extraction sums) is the networks' alone.
    """

    network: GraphModel
    feat_mean: np.ndarray = eqx.field(static=False)
    feat_std: np.ndarray = eqx.field(static=False)
    log_offset: float = eqx.field(static=True, default=0.0)
    batch_graphs: int = eqx.field(static=True, default=32)
    base: AbstractCostModel | None = None
    members: tuple[GraphModel, ...] = ()
    trained_opcodes: tuple[str, ...] | None = eqx.field(static=True, default=None)
    fallback: AbstractCostModel | None = None
    uncertain_spread: float = eqx.field(static=True, default=UNCERTAIN_SPREAD)

    @property
    def networks(self) -> tuple[GraphModel, ...]:
        """Every network of the ensemble (`network` first)."""
        return (self.network, *self.members)

    def base_log(self, graphs: Sequence[GraphArrays]) -> np.ndarray | None:
        """The base model's log seconds minus the offset (what `pack` takes)."""
        if self.base is None:
            return None
        return np.log(np.maximum(self.base.score_programs(graphs), 1e-12)) - self.log_offset

    def untrained_opcodes(self, graph: GraphArrays) -> list[str]:
        """The ops of `graph` that no training program had (their embeddings are the
        random rows each network was initialized with, so each guesses their cost
        differently); `[]` when the training ops were not recorded."""
        if self.trained_opcodes is None:
            return []
        seen = set(self.trained_opcodes)
        ids = np.unique(graph.node_opcode)
        return [OPCODES[i] for i in ids if i != UNKNOWN and OPCODES[i] not in seen]

    def untrained_features(self, graph: GraphArrays) -> list[str]:
        """The node-feature columns of `graph` that were constant over the training
        programs and differ here (a dtype or rank none of them had)."""
        constant = self._constant_columns()
        if not constant.any() or len(graph.node_feat) == 0:
            return []
        differs = (np.asarray(graph.node_feat) != np.asarray(self.feat_mean)).any(0)
        return [FEATURE_NAMES[i] for i in np.flatnonzero(constant & differs)]

    def untrained(self, graph: GraphArrays) -> list[str]:
        """`untrained_opcodes` and `untrained_features` of `graph` in words ("erf",
        "float16 values"), for notes to people."""
        return self.untrained_opcodes(graph) + [
            _feature_words(name) for name in self.untrained_features(graph)
        ]

    def _constant_columns(self) -> np.ndarray:
        # Training divides by the standard deviation plus FEATURE_STD_FLOOR.
        return np.asarray(self.feat_std) <= FEATURE_STD_FLOOR * 1.001

    def _normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """Feature mean and scale; a column constant in training reads as its training
        value. The networks learned nothing from such a column, and its deviation divided
        by the floor would be a thousandfold input to weights it never trained."""
        std = np.where(self._constant_columns(), np.inf, np.asarray(self.feat_std))
        return np.asarray(self.feat_mean), std.astype(np.float32)

    def member_log_seconds(self, graphs: Sequence[GraphArrays]) -> np.ndarray:
        """Each network's prediction, in log seconds minus `log_offset`
        (`float32[networks, len(graphs)]`)."""
        out = np.zeros((len(self.networks), len(graphs)), np.float32)
        mean, std = self._normalization()
        for i in range(0, len(graphs), self.batch_graphs):
            chunk = graphs[i : i + self.batch_graphs]
            batch = pack(
                chunk,
                self.batch_graphs,
                feat_mean=mean,
                feat_std=std,
                base_log=self.base_log(chunk),
            )
            for k, net in enumerate(self.networks):
                out[k, i : i + len(chunk)] = np.asarray(_forward(net, batch)[0])[: len(chunk)]
        return out

    def score_programs(self, graphs: Sequence[GraphArrays]) -> np.ndarray:
        return self.score_with_spread(graphs)[0]

    def score_with_spread(self, graphs: Sequence[GraphArrays]) -> tuple[np.ndarray, np.ndarray]:
        """`score_programs` and `spread` of `graphs` from one pass of the networks."""
        logs = self.member_log_seconds(graphs)
        spread = self._spread(logs)
        log_s = logs.mean(0).astype(np.float64) + self.log_offset
        weight = self.learned_weight(spread)
        lean = np.flatnonzero(weight < 1.0)
        if len(lean) and self.fallback is not None:
            other = self.fallback.score_programs([graphs[i] for i in lean])
            log_other = np.log(np.maximum(np.asarray(other, np.float64), 1e-12))
            log_s[lean] = weight[lean] * log_s[lean] + (1.0 - weight[lean]) * log_other
        return np.exp(log_s), spread

    def learned_weight(self, spread: np.ndarray) -> np.ndarray:
        """The networks' weight in a prediction of ensemble spread `spread` (1 where the
        spread is at most `uncertain_spread`, or without a `fallback`; the rest is the
        fallback's)."""
        spread = np.asarray(spread, np.float64)
        if self.fallback is None:
            return np.ones_like(spread)
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.minimum(1.0, self.uncertain_spread / spread)
        return np.where(np.isnan(spread), 1.0, weight)

    def _spread(self, logs: np.ndarray) -> np.ndarray:
        if len(self.networks) < 2:
            return np.full(logs.shape[1], np.nan)
        return np.expm1(logs.astype(np.float64).std(0))

    def spread(self, graphs: Sequence[GraphArrays]) -> np.ndarray:
        """How much the ensemble's networks disagree on each program: the standard
        deviation of their log predictions, as a relative factor (`exp(std) - 1`; 0.1 is
        about +-10%). NaN for a single network, which has no one to disagree with.

        A program unlike those in training gets a wide spread: the shipped networks stay
        at or under `uncertain_spread` on their validation families, and on held-out
        families their predictions above it were the worst (the card has the numbers)."""
        if len(self.networks) < 2:
            return np.full(len(graphs), np.nan)
        return self._spread(self.member_log_seconds(graphs))

    def score_nodes(
        self, node_opcode: Int[np.ndarray, " n"], node_feat: Float[np.ndarray, "n feat"]
    ) -> np.ndarray:
        n = len(node_opcode)
        if n == 0:
            return np.zeros(0)
        size = bucket(n)
        opcode = np.zeros(size, np.int32)
        feat = np.zeros((size, NUM_FEATURES), np.float32)
        opcode[:n] = node_opcode
        mean, std = self._normalization()
        feat[:n] = (np.asarray(node_feat) - mean) / std
        log_s = np.mean([np.asarray(_encode(net, opcode, feat)) for net in self.networks], 0)[:n]
        shares = np.exp(log_s.astype(np.float64) + self.log_offset)
        if self.base is not None:
            shares = shares + self.base.score_nodes(node_opcode, node_feat)
        return shares
