"""Datasets of measured variants as compact arrays (what `superopt collect` exports).

One record per measured variant: its family, program id, variant id, the group of tile
variants it belongs to (if any), its graph arrays (concatenated over records with offsets,
as TpuGraphs stores them), config features, XLA's cost where it answered, the measured
median seconds, relative spread and number of timed rounds, which executable it compiled
to (variants of one program that compile alike share one timing), and the median of a
second measurement run where there was one. Metadata (backend, device kind, versions) is a JSON
string inside the `.npz`.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from superopt.ir import SuperoptError

from .features import FEATURE_INDEX, NUM_CONFIG, NUM_FEATURES, GraphArrays

_FIELDS = (
    "node_opcode",
    "node_feat",
    "edge_index",
    "node_offsets",
    "edge_offsets",
    "config_feat",
    "xla_cost",
    "runtime_s",
    "spread",
    "family",
    "program_id",
    "variant_id",
    "tile_group",
)
# Written and read alongside, but not part of `content_hash` (training does not read them,
# and a dataset exported before they existed loads with `_default_extra`).
_EXTRA_FIELDS = ("executable", "rounds", "repeat_s")


# How `Dataset.runtime_of_runs` combines a record's two measurement runs.
RUN_COMBINATIONS = ("mean", "min", "in_use")

# glibc's allocator raises its mmap threshold to at most 32 MiB, so by default a buffer of
# this size or more is mapped afresh for every call and takes a page fault per 4 KiB page
# (costmodel/weights/CARD.md: a fresh process faulted on every call of the benchmark's
# cross-entropy head, 8 of 8, while a long collection could run it without faults).
LARGE_BUFFER_BYTES = 32 << 20


_NPY_MAGIC = b"\x93NUMPY"


class DatasetError(SuperoptError, ValueError):
    """A dataset file that is missing, unreadable, or not a superopt dataset."""


@dataclass(frozen=True, eq=False)
class Record:
    """One measured variant (what the collection pipeline produces per row)."""

    family: str
    program_id: str
    variant_id: str
    graph: GraphArrays
    runtime_s: float
    spread: float = 0.0
    tile_group: str = ""
    # The executable the variant compiled to, as a key unique within its program ("": its
    # own), and the timed rounds behind `runtime_s` (0: unknown).
    executable: str = ""
    rounds: int = 0
    # The median of a second measurement run (`superopt._corpus.remeasure`), NaN if none.
    repeat_s: float = float("nan")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Measured variants as arrays; `graph(i)` gives record `i`'s `GraphArrays`."""

    node_opcode: np.ndarray
    node_feat: np.ndarray
    edge_index: np.ndarray
    node_offsets: np.ndarray
    edge_offsets: np.ndarray
    config_feat: np.ndarray
    xla_cost: np.ndarray
    runtime_s: np.ndarray
    spread: np.ndarray
    family: np.ndarray
    program_id: np.ndarray
    variant_id: np.ndarray
    tile_group: np.ndarray
    executable: np.ndarray
    rounds: np.ndarray
    repeat_s: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.runtime_s.shape[0])

    def graph(self, i: int) -> GraphArrays:
        n0, n1 = self.node_offsets[i], self.node_offsets[i + 1]
        e0, e1 = self.edge_offsets[i], self.edge_offsets[i + 1]
        return GraphArrays(
            self.node_opcode[n0:n1],
            self.node_feat[n0:n1],
            self.edge_index[e0:e1],
            self.config_feat[i],
            self.xla_cost[i],
        )

    def graphs(self, indices: Sequence[int] | np.ndarray | None = None) -> list[GraphArrays]:
        idx = range(len(self)) if indices is None else indices
        return [self.graph(int(i)) for i in idx]

    @staticmethod
    def from_records(records: Sequence[Record], meta: dict[str, Any] | None = None) -> Dataset:
        """Pack records into arrays."""
        n_off = np.zeros(len(records) + 1, np.int64)
        e_off = np.zeros(len(records) + 1, np.int64)
        for i, r in enumerate(records):
            n_off[i + 1] = n_off[i] + r.graph.num_nodes
            e_off[i + 1] = e_off[i] + r.graph.num_edges

        def cat(arrays: list[np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            return np.concatenate(arrays) if arrays else np.zeros(shape, dtype)

        return Dataset(
            cat([r.graph.node_opcode for r in records], (0,), np.int32).astype(np.int32),
            cat([r.graph.node_feat for r in records], (0, NUM_FEATURES), np.float32),
            cat([r.graph.edge_index for r in records], (0, 2), np.int32).astype(np.int32),
            n_off,
            e_off,
            np.asarray([r.graph.config_feat for r in records], np.float32).reshape(-1, NUM_CONFIG),
            np.asarray([r.graph.xla_cost for r in records], np.float32).reshape(-1, 3),
            np.asarray([r.runtime_s for r in records], np.float64),
            np.asarray([r.spread for r in records], np.float32),
            np.asarray([r.family for r in records], dtype=str),
            np.asarray([r.program_id for r in records], dtype=str),
            np.asarray([r.variant_id for r in records], dtype=str),
            np.asarray([r.tile_group for r in records], dtype=str),
            np.asarray([r.executable or r.variant_id for r in records], dtype=str),
            np.asarray([r.rounds for r in records], np.int32),
            np.asarray([r.repeat_s for r in records], np.float64),
            dict(meta or {}),
        )

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The records at `indices`, as a new dataset."""
        idx = [int(i) for i in indices]
        records = [
            Record(
                str(self.family[i]),
                str(self.program_id[i]),
                str(self.variant_id[i]),
                self.graph(i),
                float(self.runtime_s[i]),
                float(self.spread[i]),
                str(self.tile_group[i]),
                str(self.executable[i]),
                int(self.rounds[i]),
                float(self.repeat_s[i]),
            )
            for i in idx
        ]
        return Dataset.from_records(records, self.meta)

    def executable_codes(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """An int per record (of `indices`, default all): equal for the records of one
        program that compiled to one executable (and so share one timing)."""
        idx = slice(None) if indices is None else np.asarray(indices, np.int64)
        keys = np.char.add(np.char.add(self.program_id[idx], "/"), self.executable[idx])
        return np.unique(keys, return_inverse=True)[1].reshape(-1)

    def runtime_of_runs(self, how: str = "mean") -> np.ndarray:
        """Each record's runtime over its measurement runs, where there is a second
        (`repeat_s`; else the first): their geometric mean (`how="mean"`), the faster of
        the two (`how="min"`), or the run in use (`how="in_use"`).

        `"in_use"` is the mean, except for a program with a buffer of `LARGE_BUFFER_BYTES`
        or more in some variant (`large_buffers`). Such a buffer takes a page fault per page
        on every call in a fresh process, and a long measurement run may have served it
        without faults. Every variant of such a program takes the run in which its
        large-buffer variants were slower relative to its other variants (the run with
        the faults; the slower run where every variant has one), so that the labels of one
        program come from one run."""
        if how not in RUN_COMBINATIONS:
            raise ValueError(f"runs combine by 'mean', 'min' or 'in_use', not {how!r}")
        both = np.isfinite(self.repeat_s) & (self.repeat_s > 0)
        out = np.array(self.runtime_s, np.float64)
        if how == "min":
            out[both] = np.minimum(out[both], self.repeat_s[both])
            return out
        out[both] = np.sqrt(out[both] * self.repeat_s[both])
        if how == "in_use":
            large = self.large_buffers()
            inverse = np.unique(self.program_id, return_inverse=True)[1].reshape(-1)
            for p in np.unique(inverse[large]):
                idx = np.flatnonzero(inverse == p)
                if not both[idx].all():
                    continue
                big = large[idx]
                first, second = np.log(self.runtime_s[idx]), np.log(self.repeat_s[idx])
                excess = [
                    run[big].mean() - (run[~big].mean() if (~big).any() else 0.0)
                    for run in (first, second)
                ]
                out[idx] = self.repeat_s[idx] if excess[1] > excess[0] else self.runtime_s[idx]
        return out

    def large_buffers(self) -> np.ndarray:
        """Per record: whether a node of its graph writes `LARGE_BUFFER_BYTES` or more."""
        written = self.node_feat[:, FEATURE_INDEX["log_bytes_written"]]
        # The feature is log1p(bytes) in float32: allow for its rounding.
        big = (written >= np.log1p(LARGE_BUFFER_BYTES) - 1e-5).astype(np.int64)
        counts = np.concatenate([[0], np.cumsum(big)])
        return counts[self.node_offsets[1:]] > counts[self.node_offsets[:-1]]

    def families(self) -> list[str]:
        return sorted(set(self.family.tolist()))

    def content_hash(self) -> str:
        """A hash of the arrays (recorded with trained weights)."""
        h = hashlib.sha256()
        for name in _FIELDS:
            h.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        """Write a compressed `.npz`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in _FIELDS + _EXTRA_FIELDS}
        with open(path, "wb") as f:
            np.savez_compressed(f, meta=np.asarray(json.dumps(self.meta)), **arrays)
        return path

    @staticmethod
    def load(path: str | Path) -> Dataset:
        """Read a dataset written by `save`; raises `DatasetError` with what to do."""
        path = Path(path)
        if not path.exists():
            raise DatasetError(
                f"no dataset at {path}; collect one with `superopt collect --out {path}` "
                "(or `superopt._corpus.collect(...)`)"
            )
        try:
            with open(path, "rb") as f:
                head = f.read(len(_NPY_MAGIC))
                if not head.startswith(b"PK"):  # an .npz is a zip archive
                    what = (
                        "is empty"
                        if not head
                        else "is a single NumPy array (.npy)"
                        if head.startswith(_NPY_MAGIC)
                        else "is not an .npz archive"
                    )
                    raise DatasetError(
                        f"{path} {what}, not a superopt dataset; `superopt collect --out` "
                        "writes one"
                    )
                f.seek(0)
                with np.load(f, allow_pickle=False) as z:
                    missing = [name for name in (*_FIELDS, "meta") if name not in z.files]
                    if missing:
                        raise DatasetError(
                            f"{path} is an .npz archive but not a superopt dataset: it has "
                            f"no {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
                        )
                    arrays = {name: z[name] for name in _FIELDS}
                    for name in _EXTRA_FIELDS:
                        arrays[name] = z[name] if name in z.files else _default_extra(name, arrays)
                    meta = json.loads(str(z["meta"]))
        except DatasetError:
            raise
        except (OSError, EOFError, KeyError, ValueError, TypeError, zlib.error,
                zipfile.BadZipFile) as err:  # fmt: skip
            raise DatasetError(
                f"{path} is not a readable superopt dataset ({type(err).__name__}: {err}); "
                "collect it again"
            ) from err
        if any(len(arrays[name]) != len(arrays["runtime_s"]) for name in _EXTRA_FIELDS):
            raise DatasetError(f"{path} is not a readable superopt dataset (ragged arrays)")
        return Dataset(**arrays, meta=meta)

    def summary(self) -> dict[str, Any]:
        """The dataset card's numbers: programs, families, variants, tile groups, noise."""
        tile_groups = {g for g in self.tile_group.tolist() if g}
        return {
            "variants": len(self),
            # Variants that compile to one executable share its timing (`superopt collect`).
            "executables": len(np.unique(self.executable_codes())),
            "programs": len(set(self.program_id.tolist())),
            "families": len(self.families()),
            "tile_groups": len(tile_groups),
            "median_relative_spread": float(np.median(self.spread)) if len(self) else 0.0,
            "machine": self.meta.get("device_kind", "unknown"),
            "backend": self.meta.get("backend", "unknown"),
        }


def split_by_family(
    dataset: Dataset,
    test_families: Sequence[str] = (),
    val_fraction: float = 0.2,
    seed: int = 0,
    val_families: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test record indices, split by family, never by row.

    **Arguments:**

    - `dataset`: the dataset.
    - `test_families`: families held out for the final evaluation.
    - `val_fraction`: fraction of the remaining families held out for early stopping,
      drawn with `seed`. With fewer than four remaining families, a fraction of their
      *programs* is held out instead (still never a row: no variant of a validation
      program is trained on).
    - `seed`: the shuffle seed.
    - `val_families`: the validation families by name, instead of a draw. Those the
      dataset has (and does not test) are used; if it has none of them, the draw decides.

    **Returns:** `(train, val, test)` index arrays.
    """
    fam = dataset.family
    test_mask = np.isin(fam, np.asarray(list(test_families), dtype=str))
    rng = np.random.default_rng(seed)
    families = sorted(set(fam[~test_mask].tolist()))
    named = [f for f in families if f in set(val_families)]
    if named:
        val_mask = ~test_mask & np.isin(fam, np.asarray(named, dtype=str))
    elif len(families) >= 4:
        rng.shuffle(families)
        n_val = max(1, round(val_fraction * len(families)))
        val_mask = ~test_mask & np.isin(fam, np.asarray(families[:n_val], dtype=str))
    else:
        programs = sorted(set(dataset.program_id[~test_mask].tolist()))
        rng.shuffle(programs)
        n_val = max(1, round(val_fraction * len(programs))) if len(programs) > 1 else 0
        val_programs = np.asarray(programs[:n_val], dtype=str)
        val_mask = ~test_mask & np.isin(dataset.program_id, val_programs)
    train_mask = ~test_mask & ~val_mask
    return np.flatnonzero(train_mask), np.flatnonzero(val_mask), np.flatnonzero(test_mask)


def _default_extra(name: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """An `_EXTRA_FIELDS` column for a dataset written without it: every variant its own
    executable, rounds unknown, no second measurement."""
    if name == "executable":
        return np.asarray(arrays["variant_id"], dtype=str)
    if name == "repeat_s":
        return np.full(len(arrays["runtime_s"]), np.nan)
    return np.zeros(len(arrays["runtime_s"]), np.int32)
