"""Datasets (TFDS builders, no TensorFlow needed) and the grain input pipeline."""

from jdiffseg.data.config import data_config_defaults
from jdiffseg.data.images import DataError
from jdiffseg.data.pipeline import make_loader, split_size, to_global
from jdiffseg.data.registry import NAMES, build_dataset, make_builder

__all__ = [
    "NAMES",
    "DataError",
    "build_dataset",
    "data_config_defaults",
    "make_builder",
    "make_loader",
    "split_size",
    "to_global",
]
