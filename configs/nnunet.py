r"""The nnU-Net-style feed-forward baseline (strong segmenter reference, E1 only).

    jdiffseg train --config=configs/nnunet.py:dataset=isic2016,preset=paper --workdir=runs/nnunet

A plain encoder-decoder (conv–dropout–BatchNorm–LeakyReLU) trained with Dice + cross-entropy
from the image alone; AdamW 3e-4 with warm-up and cosine decay, batch 16. Arguments: dataset,
variant (synthetic), preset; the mode is always 'feedforward'.
"""

from __future__ import annotations

import ml_collections

from jdiffseg.config import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The baseline; `arg` like "dataset=monuseg,preset=paper"."""
    return recipes.get_config("nnunet", arg)
