"""Input pipeline throughput: examples/s of training batches at 256 px with augmentation.

    python benchmarks/input_pipeline.py [--variant=lesion] [--workers=0,4] [--batch_size=32]

Builds a synthetic set (kept in --data_dir, a temporary folder by default) and times the grain
loader with flips, 90° rotations, random resized crop and colour jitter, after a warm-up.
Compare the figure with the train step's consumption (examples/s) on the same machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import ml_collections

from jdiffseg.data import build_dataset, data_config_defaults, make_loader


def measure(config: ml_collections.ConfigDict, batches: int, warmup: int) -> float:
    """Examples per second of one process's training loader."""
    it = iter(make_loader(config, "train", train=True, seed=0, shard=(0, 1)))
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    elapsed = time.perf_counter() - start
    return batches * batch["image"].shape[0] / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", default="lesion")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--num_examples", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", default=f"0,{min(8, os.cpu_count() or 1)}",
                   help="comma-separated worker counts to time")
    p.add_argument("--data_dir", default="")
    args = p.parse_args()

    data = data_config_defaults()
    data.update(dict(variant=args.variant, image_size=args.image_size,
                     num_train_examples=args.num_examples, num_val_examples=8,
                     num_test_examples=8, batch_size=args.batch_size,
                     data_dir=args.data_dir or tempfile.mkdtemp(prefix="jdiffseg-bench-")))
    data.augment.update(dict(flip=True, rot90=True, crop_scale=0.5, color_jitter=0.2))
    config = ml_collections.ConfigDict({"data": data})
    start = time.perf_counter()
    build_dataset(config)
    print(f"built {args.num_examples} synthetic/{args.variant} examples at {args.image_size} px "
          f"in {time.perf_counter() - start:.1f} s ({data.data_dir})")
    for workers in (int(w) for w in args.workers.split(",")):
        config.data.num_workers = workers
        rate = measure(config, args.batches, args.warmup)
        print(f"workers={workers:2d} batch={args.batch_size} size={args.image_size}px augment=on: "
              f"{rate:8.1f} examples/s ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
