"""From `config.data` to a TFDS builder, and preparing it (idempotent)."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

import ml_collections
import tensorflow_datasets as tfds

from jdiffseg.config import schema
from jdiffseg.data.builders import brats, folder, isic2016, monuseg, nnunet, synthetic, volumetric
from jdiffseg.data.config import resolve

NAMES = ("synthetic", "isic2016", "monuseg", "her2", "folder", "nnunet", "brats")
VOLUMETRIC = ("nnunet", "brats")  # NIfTI volumes sliced to 2D (`builders.volumetric`)
MULTI_RATER = ("synthetic", "her2", "folder", "nnunet")  # accept config.data.raters >= 2


class _QuietCustomConfig(logging.Filter):
    """Drops TFDS's warning for every non-predefined config: here that is the normal case."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using custom data configuration")


logging.getLogger("absl").addFilter(_QuietCustomConfig())
_CLASSES = {"synthetic": synthetic.Synthetic, "isic2016": isic2016.Isic2016,
            "monuseg": monuseg.Monuseg, "her2": folder.Her2, "folder": folder.Folder,
            "nnunet": nnunet.Nnunet, "brats": brats.Brats}


def builder_config(data: ml_collections.ConfigDict) -> tfds.core.BuilderConfig:
    """The builder config that `config.data` asks for (its name encodes its settings)."""
    data = resolve(data)
    size = int(data.image_size)
    raters = schema.rater_count(data)
    if raters and data.name not in MULTI_RATER:
        raise ValueError(f"config.data.raters={raters}: dataset {data.name!r} has one mask per "
                         f"image; several raters are read by {MULTI_RATER}")
    if data.name == "synthetic":
        counts = (int(data.num_train_examples), int(data.num_val_examples),
                  int(data.num_test_examples))
        return synthetic.make_config(data.variant, size, counts, int(data.seed), raters,
                                     float(data.rater_strength))
    if data.name == "isic2016":
        return isic2016.make_config(size, float(data.val_fraction), int(data.seed))
    if data.name == "monuseg":
        return monuseg.make_config(size, int(data.tile_size), int(data.patch_stride),
                                   float(data.val_fraction), int(data.seed))
    if data.name in ("her2", "folder"):
        label = data.name if data.name == "her2" else (data.variant or "custom")
        return folder.make_config(label, size, float(data.val_fraction),
                                  float(data.test_fraction), data.split_file, int(data.seed),
                                  raters)
    if data.name in VOLUMETRIC:
        return volumetric.make_config(
            data.variant or "custom", size, float(data.val_fraction), float(data.test_fraction),
            int(data.seed), int(data.slice_axis), data.target, float(data.empty_slices),
            bool(data.crop_nonzero), raters)
    raise ValueError(f"unknown dataset config.data.name={data.name!r}; expected one of {NAMES}")


def make_builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The builder for `config.data`, storing under data.data_dir (TFDS's default when empty)."""
    data = resolve(data)
    cls = _CLASSES.get(data.name)
    if cls is None:
        raise ValueError(f"unknown dataset config.data.name={data.name!r}; expected one of {NAMES}")
    config = builder_config(data)
    predefined = cls.builder_configs.get(config.name)
    if predefined is not None:  # TFDS refuses a custom config object named like a predefined one
        if dataclasses.asdict(predefined) != dataclasses.asdict(config):
            raise ValueError(f"{data.name}: config {config.name!r} differs from the predefined one")
        config = predefined
    data_dir = str(Path(data.data_dir).expanduser()) if data.data_dir else None
    return cls(config=config, data_dir=data_dir, file_format="array_record")


@contextlib.contextmanager
def _build_lock(dataset_dir: str) -> Iterator[None]:
    """Holds an exclusive lock on one dataset version's build while the block runs.

    The processes of a multi-host job, or the runs of a sweep sharing a data_dir, otherwise
    race to rename their `incomplete.*` folders onto the same version and all but one fail.
    """
    lock_path = Path(dataset_dir).parent / f".{Path(dataset_dir).name}.build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_dataset(config: ml_collections.ConfigDict, *, overwrite: bool = False
                  ) -> tfds.core.DatasetBuilder:
    """Generates the dataset `config.data` names unless it is already complete.

    TFDS writes into an `incomplete.*` folder renamed only on success, so an interrupted or
    failed build is never mistaken for a finished one. Concurrent callers are serialised by a
    file lock: the first builds, the others then open the finished dataset.
    """
    data = resolve(config.data if "data" in config else config)
    mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    manual_dir = str(Path(data.manual_dir).expanduser()) if data.manual_dir else None
    with _build_lock(make_builder(data).data_dir):
        builder = make_builder(data)  # made under the lock: it sees a build finished meanwhile
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, download_mode=mode, try_download_gcs=False))
    return builder
