"""`jdiffseg data build NAME ...` and `jdiffseg data show NAME --out=grid.png`."""

from __future__ import annotations

import sys
from pathlib import Path

import ml_collections
from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.data.config import data_config_defaults
from jdiffseg.data.images import DataError
from jdiffseg.data.pipeline import class_names_of, data_source, make_loader
from jdiffseg.data.registry import NAMES, VOLUMETRIC, build_dataset
from jdiffseg.evaluation import figures

COMMANDS = {
    "build": "prepare a dataset (no-op when already complete)",
    "show": "write a grid of images with mask overlays",
}


def _flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string("variant", None, "synthetic: lesion|nuclei|tissue|organs; folder: a "
                        "label naming the stored data (default: custom)", flag_values=fv)
    flags.DEFINE_integer("image_size", None, "square size in px (default 64 for synthetic, "
                         "else 256)", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "where prepared data lives (default: TFDS's)",
                        flag_values=fv)
    flags.DEFINE_string("manual_dir", None, "folder holding the downloaded originals",
                        flag_values=fv)
    flags.DEFINE_string("split_file", None, "folder datasets: JSON split file", flag_values=fv)
    flags.DEFINE_integer("seed", None, "the data's seed (synthetic, validation carving)",
                         flag_values=fv)
    flags.DEFINE_integer("num_train_examples", None, "synthetic train split size",
                         flag_values=fv)
    flags.DEFINE_integer("slice_axis", None, "nnunet, brats: the voxel axis slices are taken "
                         "along (default 2)", flag_values=fv)
    flags.DEFINE_string("target", None, "nnunet, brats: the mask: foreground (default, "
                        "binary), classes (a label map of every declared label), a class "
                        "name or a region (brats: whole_tumour, tumour_core, "
                        "enhancing_tumour)", flag_values=fv)
    flags.DEFINE_float("empty_slices", None, "nnunet, brats: fraction of training slices "
                       "without target that are kept (default 1)", flag_values=fv)
    flags.DEFINE_bool("crop_nonzero", None, "nnunet, brats: crop cases to their non-zero "
                      "region (default true)", flag_values=fv)
    flags.DEFINE_integer("raters", None, "annotators per image (synthetic: simulated; folder, "
                         "her2, nnunet: <name>_rater<k> label files); default 0: one mask",
                         flag_values=fv)
    flags.DEFINE_float("rater_strength", None, "synthetic: annotator variability in [0, 1] "
                       "(default 0.5)", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "build: regenerate even if complete", flag_values=fv)
    flags.DEFINE_string("out", None, "show: PNG file to write", flag_values=fv)
    flags.DEFINE_enum("split", "train", ["train", "validation", "test"], "show: the split",
                      flag_values=fv)
    flags.DEFINE_integer("num", 16, "show: number of examples in the grid", flag_values=fv)
    flags.DEFINE_bool("augment", False, "show: the training pipeline's output (augmentation "
                      "from the defaults)", flag_values=fv)
    return fv


def _usage(fv: flags.FlagValues) -> str:
    commands = "\n".join(f"  {name:<6} {text}" for name, text in COMMANDS.items())
    return (f"usage: jdiffseg data build|show NAME [flags]\n\n{commands}\n\nNAME: "
            f"{' | '.join(NAMES)}\n\n{fv.get_help()}")


def config_from_flags(name: str, fv: flags.FlagValues) -> ml_collections.ConfigDict:
    """A config with the `data` section set from the command line."""
    data = data_config_defaults()
    data.name = name
    data.image_size = fv.image_size or (64 if name == "synthetic" else 256)
    if fv.variant:
        data.variant = fv.variant
    elif name in ("folder", *VOLUMETRIC):
        data.variant = "custom"
    for field in ("data_dir", "manual_dir", "split_file", "seed", "num_train_examples",
                  "slice_axis", "target", "empty_slices", "crop_nonzero", "raters",
                  "rater_strength"):
        value = fv[field].value
        if value is not None:
            data[field] = value
    return ml_collections.ConfigDict({"data": data})


def _show(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> None:
    config.data.batch_size = config.data.eval_batch_size = fv.num
    config.data.num_classes = len(class_names_of(config)) - 1  # whatever the dataset declares
    loader = make_loader(config, fv.split, train=fv.augment, seed=0, shard=(0, 1))
    batch = next(iter(loader))
    keep = batch["valid"] > 0
    out = Path(fv.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    ids = [str(i) for i in batch["index"][keep]]
    masks = batch["mask"][keep]
    if masks.shape[-1] > 1:  # one-hot label maps: every foreground class is overlaid
        masks = 1.0 - masks[..., :1]
    value_range = (-1.0, 1.0)
    if config.data.name in VOLUMETRIC:  # case/slice ids; z-scored channels shown over ±3
        source = data_source(config, fv.split)
        ids = [source[int(i)]["id"].decode() for i in batch["index"][keep]]
        value_range = (-3.0, 3.0)
    figures.overlay_grid(out, batch["image"][keep], masks, ids=ids, ncols=8,
                         value_range=value_range)
    print(f"wrote {out} ({int(keep.sum())} examples of {config.data.name}/{fv.split})")


def main(argv: list[str]) -> int:
    """Runs `jdiffseg data ...`; `argv` excludes the program and `data` words. Returns 0 on
    success, 1 when the data is missing or bad (the message says which file and where)."""
    fv = _flags()
    positional = cli_flags.parse_positional(fv, "data", argv, _usage(fv))
    if len(positional) != 2 or positional[0] not in COMMANDS or positional[1] not in NAMES:
        print(f"jdiffseg data: expected build|show NAME, got {positional}\n\n{_usage(fv)}",
              file=sys.stderr)
        return 2
    command, name = positional
    if command == "show" and not fv.out:
        print("jdiffseg data show: give --out=FILE.png", file=sys.stderr)
        return 2
    config = config_from_flags(name, fv)
    try:
        if command == "build":
            builder = build_dataset(config, overwrite=fv.overwrite)
            sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
            print(f"{config.data.name}/{builder.builder_config.name} ready in {builder.data_dir}: "
                  f"{sizes}")
        else:
            _show(config, fv)
    except (DataError, ValueError) as e:
        print(f"error: {e}")
        return 1
    return 0
