"""TFDS builders (array_record files, zlib tensors: they build and read without TensorFlow)."""

from jdiffseg.data.builders.brats import Brats
from jdiffseg.data.builders.folder import Folder, Her2
from jdiffseg.data.builders.isic2016 import Isic2016
from jdiffseg.data.builders.monuseg import Monuseg
from jdiffseg.data.builders.nnunet import Nnunet
from jdiffseg.data.builders.synthetic import Synthetic

__all__ = ["Brats", "Folder", "Her2", "Isic2016", "Monuseg", "Nnunet", "Synthetic"]
