r"""EnsemDiff (Wolleb et al. 2022) as its authors trained it.

    jdiffseg train --config=configs/ensemdiff.py:dataset=isic2016,preset=paper --workdir=runs/ens
    jdiffseg train --config=configs/ensemdiff.py:mode=feedforward --workdir=runs/ens_e1

Image channels and the noisy mask are concatenated as the UNet input; T=1000 linear betas,
ε-prediction with a learned-range variance trained by MSE + VB, masks in {0, 1}, AdamW 1e-4,
EMA 0.9999, batch 10; evaluation fuses 5 full-chain DDPM samples by their mean.
Arguments: dataset, variant (synthetic), mode, preset (see `jdiffseg.config.recipes`).
"""

from __future__ import annotations

import ml_collections

from jdiffseg.config import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """EnsemDiff; `arg` like "dataset=isic2016,mode=diffusion,preset=paper"."""
    return recipes.get_config("ensemdiff", arg)
