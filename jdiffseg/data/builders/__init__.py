"""TFDS builders (array_record files, zlib tensors: they build and read without TensorFlow)."""

from jdiffseg.data.builders.folder import Folder, Her2
from jdiffseg.data.builders.isic2016 import Isic2016
from jdiffseg.data.builders.monuseg import Monuseg
from jdiffseg.data.builders.synthetic import Synthetic

__all__ = ["Folder", "Her2", "Isic2016", "Monuseg", "Synthetic"]
