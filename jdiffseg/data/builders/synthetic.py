"""The embedded default dataset: procedurally generated, no download (see `procedural`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import tensorflow_datasets as tfds

from jdiffseg.data import procedural, raters
from jdiffseg.data.builders import common

DEFAULT_SIZE = 64
DEFAULT_COUNTS = (512, 64, 128)  # train, validation, test
DEFAULT_STRENGTH = 0.5  # of the simulated annotators


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    variant: str = "lesion"
    image_size: int = DEFAULT_SIZE
    num_train: int = DEFAULT_COUNTS[0]
    num_val: int = DEFAULT_COUNTS[1]
    num_test: int = DEFAULT_COUNTS[2]
    seed: int = 0
    raters: int = 0  # simulated annotators per image; 0: the exact mask only
    rater_strength: float = DEFAULT_STRENGTH


def make_config(variant: str, image_size: int = DEFAULT_SIZE,
                counts: tuple[int, int, int] = DEFAULT_COUNTS, seed: int = 0,
                num_raters: int = 0, rater_strength: float = DEFAULT_STRENGTH
                ) -> SyntheticConfig:
    """A config whose name encodes every setting that differs from the defaults. One rater
    is the exact mask, stored as without raters; the strength matters only with raters."""
    if variant not in procedural.ALL_VARIANTS:
        raise ValueError(f"unknown synthetic variant {variant!r}; expected one of "
                         f"{procedural.ALL_VARIANTS}")
    if num_raters < 2:
        num_raters, rater_strength = 0, DEFAULT_STRENGTH
    elif variant in procedural.MULTICLASS_VARIANTS:
        raise ValueError(f"config.data.raters={num_raters}: simulated annotators draw binary "
                         f"masks; the multi-class variant {variant!r} has none")
    name = common.config_name(variant, [
        ("{}px", image_size, DEFAULT_SIZE),
        ("n{}", "-".join(map(str, counts)), "-".join(map(str, DEFAULT_COUNTS))),
        ("seed{}", seed, 0),
        ("raters{}", num_raters, 0),
        ("strength{}", rater_strength, DEFAULT_STRENGTH),
    ])
    return SyntheticConfig(
        name=name, version=common.VERSION, release_notes=common.RELEASE_NOTES,
        description=f"synthetic {variant} segmentation, {image_size} px",
        variant=variant, image_size=image_size, num_train=counts[0], num_val=counts[1],
        num_test=counts[2], seed=seed, raters=num_raters, rater_strength=rater_strength)


class Synthetic(common.Builder, skip_registration=True):
    """Synthetic lesion / nuclei / tissue (binary) and organs (three classes) segmentation,
    deterministic from the config's seed; the binary ones optionally with simulated annotators
    (`procedural.annotators`): `raters` holds their masks, `mask` their majority."""

    name = "synthetic"
    BUILDER_CONFIGS = [make_config(v) for v in procedural.ALL_VARIANTS]  # noqa: RUF012

    def _info(self) -> tfds.core.DatasetInfo:
        variant = self.builder_config.variant
        metadata = None
        if variant in procedural.MULTICLASS_VARIANTS:
            names = list(procedural.CLASS_NAMES[variant])
            metadata = tfds.core.MetadataDict(class_names=names)
        return common.dataset_info(self, procedural.__doc__, self.builder_config.image_size,
                                   metadata=metadata, raters=self.builder_config.raters)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        c = self.builder_config
        counts = {"train": c.num_train, "validation": c.num_val, "test": c.num_test}
        return {split: self._generate_examples(split, n) for split, n in counts.items() if n}

    def _generate_examples(self, split: str, n: int) -> Iterator[tuple[str, dict]]:
        c = self.builder_config
        for i in range(n):
            image, mask = procedural.generate(c.variant, c.image_size, c.seed, split, i)
            key = f"{split}_{i:06d}"
            if not c.raters:
                yield key, common.example(key, image, mask[..., None])
                continue
            drawn = procedural.annotators(mask, c.raters, c.rater_strength, c.seed, c.variant,
                                          split, i)[..., None]
            yield key, common.example(key, image, raters.majority(drawn), raters=drawn)
