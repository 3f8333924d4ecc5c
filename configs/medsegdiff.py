r"""MedSegDiff (Wu et al. 2023) as its public code trains it.

    jdiffseg train --config=configs/medsegdiff.py:dataset=isic2016,preset=paper --workdir=runs/msd
    jdiffseg train --config=configs/medsegdiff.py:mode=feedforward --workdir=runs/msd_e1

The guided UNet (image concatenated) plus an nnU-Net-style condition encoder whose sigmoid
output 'cal' gets a 10× MSE calibration loss; T=1000 linear, ε-prediction, learned-range
variance with MSE + VB, masks in {0, 1}; AdamW 1e-4, EMA 0.9999, batch 8; 5-sample ensembles.
Arguments: dataset, variant (synthetic), mode, preset (see `jdiffseg.config.recipes`).
"""

from __future__ import annotations

import ml_collections

from jdiffseg.config import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """MedSegDiff; `arg` like "dataset=isic2016,mode=diffusion,preset=paper"."""
    return recipes.get_config("medsegdiff", arg)
