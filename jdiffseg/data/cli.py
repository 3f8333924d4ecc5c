"""`jdiffseg data build NAME ...` and `jdiffseg data show NAME --out=grid.png`."""

from __future__ import annotations

import argparse
from pathlib import Path

import ml_collections

from jdiffseg import figures
from jdiffseg.data.config import data_config_defaults
from jdiffseg.data.images import DataError
from jdiffseg.data.pipeline import make_loader
from jdiffseg.data.registry import NAMES, build_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jdiffseg data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("build", "prepare a dataset (no-op when already complete)"),
                        ("show", "write a grid of images with mask overlays")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("name", choices=NAMES)
        s.add_argument("--variant", help="synthetic: lesion|nuclei|tissue; folder: a label "
                                         "naming the stored data (default: custom)")
        s.add_argument("--image_size", type=int,
                       help="square size in px (default 64 for synthetic, else 256)")
        s.add_argument("--data_dir", help="where prepared data lives (default: TFDS's)")
        s.add_argument("--manual_dir", help="folder holding the downloaded originals")
        s.add_argument("--split_file", help="folder datasets: JSON split file")
        s.add_argument("--seed", type=int, help="the data's seed (synthetic, validation carving)")
        s.add_argument("--num_train_examples", type=int, help="synthetic train split size")
    build = sub.choices["build"]
    build.add_argument("--overwrite", action="store_true", help="regenerate even if complete")
    show = sub.choices["show"]
    show.add_argument("--out", required=True, help="PNG file to write")
    show.add_argument("--split", default="train", choices=("train", "validation", "test"))
    show.add_argument("--num", type=int, default=16, help="number of examples in the grid")
    show.add_argument("--augment", action="store_true",
                      help="show the training pipeline's output (augmentation from the defaults)")
    return p


def config_from_args(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """A config with the `data` section set from the command line."""
    data = data_config_defaults()
    data.name = args.name
    data.image_size = args.image_size or (64 if args.name == "synthetic" else 256)
    if args.variant:
        data.variant = args.variant
    elif args.name == "folder":
        data.variant = "custom"
    for field in ("data_dir", "manual_dir", "split_file", "seed", "num_train_examples"):
        value = getattr(args, field)
        if value is not None:
            data[field] = value
    return ml_collections.ConfigDict({"data": data})


def _show(config: ml_collections.ConfigDict, args: argparse.Namespace) -> None:
    config.data.batch_size = config.data.eval_batch_size = args.num
    loader = make_loader(config, args.split, train=args.augment, seed=0, shard=(0, 1))
    batch = next(iter(loader))
    keep = batch["valid"] > 0
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    ids = [str(i) for i in batch["index"][keep]]
    figures.overlay_grid(out, batch["image"][keep], batch["mask"][keep], ids=ids, ncols=8)
    print(f"wrote {out} ({int(keep.sum())} examples of {config.data.name}/{args.split})")


def data_main(argv: list[str]) -> int:
    """Runs `jdiffseg data ...`; `argv` excludes the program and `data` words. Returns 0 on
    success, 1 when the data is missing or bad (the message says which file and where)."""
    args = _parser().parse_args(argv)
    config = config_from_args(args)
    try:
        if args.command == "build":
            builder = build_dataset(config, overwrite=args.overwrite)
            sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
            print(f"{config.data.name}/{builder.builder_config.name} ready in {builder.data_dir}: "
                  f"{sizes}")
        else:
            _show(config, args)
    except (DataError, ValueError) as e:
        print(f"error: {e}")
        return 1
    return 0
