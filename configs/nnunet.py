r"""The nnU-Net-style feed-forward baseline (strong segmenter reference, E1 only).

    jdiffseg train --config=configs/nnunet.py:dataset=isic2016,preset=paper --workdir=runs/nnunet

A plain encoder-decoder (conv–dropout–BatchNorm–LeakyReLU) trained with Dice + cross-entropy
from the image alone; AdamW 3e-4 with warm-up and cosine decay, batch 16. Arguments: dataset,
variant (synthetic), preset; the mode is always 'feedforward'.
"""

from __future__ import annotations

import ml_collections

from jdiffseg import experiment_config

SETTINGS = {
    "train.lr": 3e-4,
    "train.weight_decay": 1e-4,
    "train.warmup_steps": 100,
    "train.lr_schedule": "cosine",
    "train.ema_decay": 0.999,
    "data.batch_size": 16,
    "data.eval_batch_size": 16,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The baseline; `arg` like "dataset=monuseg,preset=paper"."""
    args = experiment_config.parse(arg, mode="feedforward")
    if args.mode != "feedforward":
        raise ValueError(f"configs/nnunet.py trains feed-forward only, got mode={args.mode!r}")
    return experiment_config.build("nnunet", args, SETTINGS)
