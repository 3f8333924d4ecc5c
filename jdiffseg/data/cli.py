"""`jdiffseg data build NAME ...` and `jdiffseg data show NAME --out=grid.png`."""

from __future__ import annotations

import argparse
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image

from jdiffseg.data.config import data_config_defaults
from jdiffseg.data.images import DataError
from jdiffseg.data.pipeline import make_loader
from jdiffseg.data.registry import NAMES, build_dataset

_OVERLAY = np.array([0, 255, 80], np.float32)


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


def overlay_grid(images: np.ndarray, masks: np.ndarray, columns: int = 8) -> np.ndarray:
    """uint8 grid: each image with its mask tinted green and its boundary drawn solid."""
    m = masks[..., 0].astype(bool)
    edge = m & ~(np.roll(m, 1, 1) & np.roll(m, -1, 1) & np.roll(m, 1, 2) & np.roll(m, -1, 2))
    tiles = images.astype(np.float32)
    tiles = np.where(m[..., None], 0.7 * tiles + 0.3 * _OVERLAY, tiles)
    tiles = np.where(edge[..., None], _OVERLAY, tiles).astype(np.uint8)
    n, h, w, _ = tiles.shape
    rows = -(-n // columns)
    cols = min(columns, n)
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = tile
    return grid


def _show(config: ml_collections.ConfigDict, args: argparse.Namespace) -> None:
    config.data.batch_size = config.data.eval_batch_size = args.num
    loader = make_loader(config, args.split, train=args.augment, seed=0, shard=(0, 1))
    batch = next(iter(loader))
    keep = batch["valid"] > 0
    images = np.round((batch["image"][keep] + 1.0) * 127.5).astype(np.uint8)
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_grid(images, batch["mask"][keep])).save(out)
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
