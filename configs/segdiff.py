r"""SegDiff (Amit et al. 2021) as its authors trained it.

    jdiffseg train --config=configs/segdiff.py:dataset=monuseg,preset=paper --workdir=runs/segdiff
    jdiffseg train --config=configs/segdiff.py:mode=feedforward --workdir=runs/segdiff_e1

The UNet sees only the noisy mask; an RRDB encoder of the image is added to its first feature
map. T=100 with the linear schedule rescaled by 1000/T (β 0.001…0.2) and the network fed the
raw t (their medical script sets rescale_timesteps=False), ε-prediction, fixed (large) variance,
no clipping of the predicted x0 (clip_denoised=False), masks in {-1, 1}, loss = per-image sum of
squared errors; AdamW 1e-4, EMA 0.9999, batch 2 (MoNuSeg script); evaluation: mean of 9
samples, rounded.
Arguments: dataset, variant (synthetic), mode, preset (see `jdiffseg.config.recipes`).
"""

from __future__ import annotations

import ml_collections

from jdiffseg.config import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """SegDiff; `arg` like "dataset=isic2016,mode=diffusion,preset=paper"."""
    return recipes.get_config("segdiff", arg)
