r"""SegFormer (Xie et al. 2021), the second strong feed-forward baseline (E1 only).

    jdiffseg train --config=configs/segformer.py:dataset=isic2016,preset=b0 --workdir=runs/sf
    jdiffseg train --config=configs/segformer.py:dataset=isic2016,preset=b2 \
        --config.model.pretrained=/weights/mit-b2 --workdir=runs/sf-b2

A Mix Transformer encoder and an all-MLP decoder trained with Dice + cross-entropy from the
image alone; AdamW 6e-5, weight decay 0.01, warm-up and decay, batch 16. Arguments: dataset,
variant (synthetic), preset (b0..b5, tiny), scale (paper: 256 px, 100k steps, the default for
b0..b5; tiny: 32 px, 1000 steps, as the study); the mode is always 'feedforward'.
`model.pretrained` names a local transformers checkpoint directory (an ImageNet-pretrained
`mit-b*` encoder or a fine-tuned model) to start from.
"""

from __future__ import annotations

import ml_collections

from jdiffseg.config import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """SegFormer; `arg` like "dataset=monuseg,preset=b0"."""
    return recipes.get_config("segformer", arg)
