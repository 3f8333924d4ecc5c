"""The grain input pipeline: prepared TFDS data -> per-process numpy batches -> global arrays.

Training: endless, seeded shuffling (reshuffled every epoch), each process reading a disjoint
shard (`grain.sharding.ShardOptions`), augmentation with a per-record RNG derived from the seed
(so results do not depend on the number of workers), fixed per-process batches. The iterator of
the returned `grain.DataLoader` has `get_state()` / `set_state()`; restoring a saved state resumes
with exactly the batches that would have followed.

Evaluation: one pass in file order; the split is cut into `process_count` contiguous shards padded
to the same whole number of batches, so every process runs the same number of steps; padded
rows have `valid == 0` and `index == -1`.

Every batch is {'image': float32 (b,H,W,C) (2D datasets: RGB in [-1,1]; volumetric datasets:
the channels as stored, already normalised), 'mask': float32 (b,H,W,1) in {0,1},
'valid': float32 (b,), 'index': int32 (b,) record index in the split}, b the per-process batch.
With `config.data.num_classes` = C >= 2 the stored label maps become one-hot masks
(b,H,W,C+1), background first; C must match the class names the dataset declares.

Multi-rater datasets (examples with `raters`, see `jdiffseg.data.raters`): training replaces
each example's `mask` by the rater `config.data.train_rater` names: 'random' draws one
uniformly with the record's seeded RNG (so a new draw every epoch, the same on a resumed run),
'majority' keeps the stored majority, k always rater k. Evaluation's `mask` is
`config.eval.reference`: 'majority', 'rater<k>' (or k), or 'all': the majority, and the batch
also carries 'raters' float32 (b,R,H,W,1) (one-hot (b,R,H,W,C+1) for label maps).
"""

from __future__ import annotations

import math
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdiffseg.config import schema
from jdiffseg.data.augment import AugmentConfig, augment
from jdiffseg.data.builders.common import class_names
from jdiffseg.data.config import resolve
from jdiffseg.data.registry import build_dataset, make_builder


class IndexedSource:
    """Random access over `indices` of a TFDS data source; -1 yields an all-zero padding row.

    Rows keep only what the pipeline needs (`keys`: image, mask, and raters where they are
    used) plus the record index."""

    def __init__(self, source: Any, indices: np.ndarray,
                 keys: tuple[str, ...] = ("image", "mask")):
        self._source = source
        self._indices = np.asarray(indices, np.int64)
        self._keys = keys
        self._blank: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self._indices[i])
        if j < 0:
            if self._blank is None:
                first = self._source[0]
                self._blank = {k: np.zeros_like(first[k]) for k in self._keys}
            return {**self._blank, "index": np.int32(-1)}
        rec = self._source[j]
        return {**{k: rec[k] for k in self._keys}, "index": np.int32(j)}

    def __repr__(self) -> str:
        return f"IndexedSource({self._source!r}, {len(self)} rows)"


class SelectRater(grain.transforms.RandomMap):
    """Multi-rater rows: `mask` <- rater `choice`'s mask, or with 'random' a rater drawn
    uniformly with the record's RNG; `raters` is dropped."""

    def __init__(self, choice: str | int):
        self.choice = choice

    def random_map(self, row: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        raters = row["raters"]
        k = int(rng.integers(len(raters))) if self.choice == "random" else int(self.choice)
        return {**{key: v for key, v in row.items() if key != "raters"}, "mask": raters[k]}


class Augment(grain.transforms.RandomMap):
    """Random augmentation of a training row (see `jdiffseg.data.augment`)."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def random_map(self, row: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image, mask = augment(row["image"], row["mask"], rng, self.cfg)
        return {**row, "image": image, "mask": mask}


def normalise_image(image: np.ndarray) -> np.ndarray:
    """uint8/float [0, 255] image -> float32 [-1, 1], the model input of 2D datasets (also what
    `jdiffseg predict` feeds new images)."""
    return np.asarray(image, np.float32) / np.float32(127.5) - np.float32(1.0)


class Normalise(grain.transforms.Map):
    """uint8/float [0, 255] image -> float32 [-1, 1]; mask -> float32 {0, 1} (one-hot over
    C + 1 channels when `num_classes` = C >= 2); adds `valid`.

    Volumetric datasets store their images already normalised (float32 channels, see
    `jdiffseg.data.intensity`); with `volumetric` they pass unchanged."""

    def __init__(self, num_classes: int = 1, volumetric: bool = False):
        self.num_classes = num_classes
        self.volumetric = volumetric

    def target(self, mask: np.ndarray, index: int) -> np.ndarray:
        """A stored mask (..., 1) -> float32 {0, 1}, one-hot over C + 1 channels for C >= 2."""
        mask = np.asarray(mask)
        if self.num_classes > 1:
            if mask.max(initial=0) > self.num_classes:
                raise ValueError(
                    f"record {int(index)}: label {int(mask.max())} exceeds "
                    f"config.data.num_classes={self.num_classes}")
            mask = np.eye(self.num_classes + 1, dtype=np.float32)[mask[..., 0]]
        return np.asarray(mask, np.float32)

    def map(self, row: dict[str, Any]) -> dict[str, Any]:
        image = np.asarray(row["image"], np.float32)
        out = {
            "image": image if self.volumetric else normalise_image(image),
            "mask": self.target(row["mask"], row["index"]),
            "valid": np.float32(row["index"] >= 0),
            "index": row["index"],
        }
        if "raters" in row:
            out["raters"] = self.target(row["raters"], row["index"])
        return out


def default_shard() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()


def per_process_batch(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(f"global batch size {global_batch} is not divisible by the "
                         f"{process_count} processes")
    return global_batch // process_count


def eval_indices(n: int, shard: tuple[int, int], batch: int) -> np.ndarray:
    """Contiguous shard `shard[0]` of `shard[1]` over range(n), padded with -1 to a whole number
    of batches that is the same for every shard."""
    index, count = shard
    per_shard = math.ceil(n / count)
    length = max(math.ceil(per_shard / batch), 1) * batch
    own = np.array_split(np.arange(n), count)[index]
    return np.concatenate([own, np.full(length - len(own), -1, np.int64)])


def check_num_classes(data: ml_collections.ConfigDict, info: Any) -> None:
    """Raises unless `data.num_classes` equals the foreground classes the dataset declares."""
    names = class_names(info)
    want = int(data.num_classes)
    if want != len(names) - 1:
        raise ValueError(
            f"config.data.num_classes={want} but dataset {data.name!r} ({info.full_name}) "
            f"declares {len(names) - 1} foreground class(es) {list(names[1:])}; set "
            f"--config.data.num_classes={len(names) - 1}")


def data_source(config: ml_collections.ConfigDict, split: str) -> Any:
    """Random-access source of a prepared split (prepared first if needed), checked to have
    the classes `config.data.num_classes` says."""
    data = resolve(config.data)
    builder = make_builder(data)
    if not builder.is_prepared():
        builder = build_dataset(config)
    check_num_classes(data, builder.info)
    if split not in builder.info.splits:
        raise ValueError(f"{data.name}: no split {split!r}; have {list(builder.info.splits)}")
    return builder.as_data_source(split)


def class_names_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The class names of the (prepared) dataset `config.data` names, background first."""
    builder = make_builder(config.data)
    if not builder.is_prepared():
        builder = build_dataset(config)
    return class_names(builder.info)


def dataset_metadata(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The metadata of the (prepared) dataset `config.data` names, e.g. a run's volumetric
    dataset: channel names, CT normalisation statistics, slice axis and size, classes (see
    `jdiffseg.data.builders.volumetric.metadata`); empty for datasets that store none."""
    builder = make_builder(config.data)
    if not builder.is_prepared():
        builder = build_dataset(config)
    return dict(builder.info.metadata or {})


def rater_ops(config: ml_collections.ConfigDict, first: dict[str, Any], train: bool
              ) -> tuple[tuple[str, ...], list[grain.transforms.RandomMap]]:
    """The row keys and the rater selection that `config.data.train_rater` (training) or
    `config.eval.reference` ask of a dataset whose first record is `first`."""
    key = "data.train_rater" if train else "eval.reference"
    choice = schema.rater_choice(config, key)
    if "raters" not in first:
        if choice == "all" or isinstance(choice, int):
            raise ValueError(f"config.{key}={choice!r}: dataset {config.data.name!r} has one "
                             f"mask per image (no raters; see config.data.raters)")
        return ("image", "mask"), []
    count = len(first["raters"])
    if isinstance(choice, int) and choice >= count:
        raise ValueError(f"config.{key}={choice!r}: dataset {config.data.name!r} has {count} "
                         f"raters (0..{count - 1})")
    if choice == "majority":
        return ("image", "mask"), []
    keys = ("image", "mask", "raters")
    return keys, [] if choice == "all" else [SelectRater(choice)]


def make_loader(config: ml_collections.ConfigDict, split: str, *, train: bool, seed: int,
                shard: tuple[int, int] | None = None) -> grain.DataLoader:
    """A grain DataLoader over `split` for this process (see the module docstring)."""
    data = resolve(config.data)
    shard = default_shard() if shard is None else shard
    source = data_source(config, split)
    if len(source) == 0:
        raise ValueError(f"{data.name}: split {split!r} is empty")
    keys, ops = rater_ops(config, source[0], train)
    if train:
        batch = per_process_batch(int(data.batch_size), shard[1])
        if len(source) < batch * shard[1]:
            raise ValueError(f"{data.name}/{split}: {len(source)} examples are fewer than one "
                             f"global batch of {batch * shard[1]}")
        sampler = grain.samplers.IndexSampler(
            num_records=len(source), shuffle=True, num_epochs=None, seed=seed,
            shard_options=grain.sharding.ShardOptions(shard[0], shard[1], drop_remainder=True))
        rows = IndexedSource(source, np.arange(len(source)), keys)
        label_map = int(data.num_classes) > 1
        ops += [Augment(AugmentConfig.from_config(data.augment, label_map=label_map))]
    else:
        batch = per_process_batch(int(data.eval_batch_size), shard[1])
        rows = IndexedSource(source, eval_indices(len(source), shard, batch), keys)
        sampler = grain.samplers.IndexSampler(num_records=len(rows), shuffle=False, num_epochs=1,
                                              seed=seed)
    volumetric = source[0]["image"].dtype != np.uint8  # stored float: already normalised
    ops += [Normalise(int(data.num_classes), volumetric),
            grain.transforms.Batch(batch, drop_remainder=train)]
    if int(data.num_workers) > 0 and not flags.FLAGS.is_parsed():
        # grain's worker processes read absl flags; outside an absl app (tests, notebooks) use
        # their defaults instead of failing.
        flags.FLAGS.mark_as_parsed()
    return grain.DataLoader(data_source=rows, sampler=sampler, operations=ops,
                            worker_count=int(data.num_workers))


def split_size(config: ml_collections.ConfigDict, split: str) -> int:
    """Number of examples in a prepared split."""
    return len(data_source(config, split))


def to_global(batch: dict[str, np.ndarray], mesh: Mesh, spec: PartitionSpec | None = None
              ) -> dict[str, jax.Array]:
    """Per-process numpy batch -> global jax.Arrays placed by `spec` on `mesh` (default: the
    leading, batch, dimension split over the mesh's 'data' axis)."""
    sharding = NamedSharding(mesh, PartitionSpec("data") if spec is None else spec)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
