"""The embedded default dataset: procedurally generated, no download (see `procedural`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import tensorflow_datasets as tfds

from jdiffseg.data import procedural
from jdiffseg.data.builders import common

DEFAULT_SIZE = 64
DEFAULT_COUNTS = (512, 64, 128)  # train, validation, test


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    variant: str = "lesion"
    image_size: int = DEFAULT_SIZE
    num_train: int = DEFAULT_COUNTS[0]
    num_val: int = DEFAULT_COUNTS[1]
    num_test: int = DEFAULT_COUNTS[2]
    seed: int = 0


def make_config(variant: str, image_size: int = DEFAULT_SIZE,
                counts: tuple[int, int, int] = DEFAULT_COUNTS, seed: int = 0) -> SyntheticConfig:
    """A config whose name encodes every setting that differs from the defaults."""
    if variant not in procedural.ALL_VARIANTS:
        raise ValueError(f"unknown synthetic variant {variant!r}; expected one of "
                         f"{procedural.ALL_VARIANTS}")
    name = common.config_name(variant, [
        ("{}px", image_size, DEFAULT_SIZE),
        ("n{}", "-".join(map(str, counts)), "-".join(map(str, DEFAULT_COUNTS))),
        ("seed{}", seed, 0),
    ])
    return SyntheticConfig(
        name=name, version=common.VERSION, release_notes=common.RELEASE_NOTES,
        description=f"synthetic {variant} segmentation, {image_size} px",
        variant=variant, image_size=image_size, num_train=counts[0], num_val=counts[1],
        num_test=counts[2], seed=seed)


class Synthetic(common.Builder, skip_registration=True):
    """Synthetic lesion / nuclei / tissue (binary) and organs (three classes) segmentation,
    deterministic from the config's seed."""

    name = "synthetic"
    BUILDER_CONFIGS = [make_config(v) for v in procedural.ALL_VARIANTS]  # noqa: RUF012

    def _info(self) -> tfds.core.DatasetInfo:
        variant = self.builder_config.variant
        metadata = None
        if variant in procedural.MULTICLASS_VARIANTS:
            names = list(procedural.CLASS_NAMES[variant])
            metadata = tfds.core.MetadataDict(class_names=names)
        return common.dataset_info(self, procedural.__doc__, self.builder_config.image_size,
                                   metadata=metadata)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        c = self.builder_config
        counts = {"train": c.num_train, "validation": c.num_val, "test": c.num_test}
        return {split: self._generate_examples(split, n) for split, n in counts.items() if n}

    def _generate_examples(self, split: str, n: int) -> Iterator[tuple[str, dict]]:
        c = self.builder_config
        for i in range(n):
            image, mask = procedural.generate(c.variant, c.image_size, c.seed, split, i)
            key = f"{split}_{i:06d}"
            yield key, common.example(key, image, mask[..., None])
