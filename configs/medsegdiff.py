r"""MedSegDiff (Wu et al. 2023) as its public code trains it.

    jdiffseg train --config=configs/medsegdiff.py:dataset=isic2016,preset=paper --workdir=runs/msd
    jdiffseg train --config=configs/medsegdiff.py:mode=feedforward --workdir=runs/msd_e1

The guided UNet (image concatenated) plus an nnU-Net-style condition encoder whose sigmoid
output 'cal' gets a 10× MSE calibration loss; T=1000 linear, ε-prediction, learned-range
variance with MSE + VB, masks in {0, 1}; AdamW 1e-4, EMA 0.9999, batch 8; 5-sample ensembles.
Arguments: dataset, variant (synthetic), mode, preset (see `jdiffseg.experiment_config`).
"""

from __future__ import annotations

import ml_collections

from jdiffseg import experiment_config

AUTHORS = {
    "diffusion.num_timesteps": 1000,
    "diffusion.schedule": "linear",
    "diffusion.prediction": "eps",
    "diffusion.variance": "learned_range",
    "diffusion.use_vb": True,
    "diffusion.mask_encoding": "zero_one",
    "diffusion.loss_reduction": "mean",
    "diffusion.rescale_timesteps": False,
    "train.lr": 1e-4,
    "train.weight_decay": 0.0,
    "train.warmup_steps": 0,
    "train.lr_schedule": "constant",
    "train.ema_decay": 0.9999,
    "train.cal_loss_weight": 10.0,
    "data.batch_size": 8,
    "data.eval_batch_size": 8,
    "eval.ensemble_size": 5,
    "eval.sampler": "ddpm",
    "eval.sampling_steps": 0,
    "eval.fusion": "mean",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """MedSegDiff; `arg` like "dataset=isic2016,mode=diffusion,preset=paper"."""
    return experiment_config.build("medsegdiff", experiment_config.parse(arg), AUTHORS)
