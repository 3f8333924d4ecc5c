r"""EnsemDiff (Wolleb et al. 2022) as its authors trained it.

    jdiffseg train --config=configs/ensemdiff.py:dataset=isic2016,preset=paper --workdir=runs/ens
    jdiffseg train --config=configs/ensemdiff.py:mode=feedforward --workdir=runs/ens_e1

Image channels and the noisy mask are concatenated as the UNet input; T=1000 linear betas,
ε-prediction with a learned-range variance trained by MSE + VB, masks in {0, 1}, AdamW 1e-4,
EMA 0.9999, batch 10; evaluation fuses 5 full-chain DDPM samples by their mean.
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
    "data.batch_size": 10,
    "data.eval_batch_size": 10,
    "eval.ensemble_size": 5,
    "eval.sampler": "ddpm",
    "eval.sampling_steps": 0,
    "eval.fusion": "mean",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """EnsemDiff; `arg` like "dataset=isic2016,mode=diffusion,preset=paper"."""
    return experiment_config.build("ensemdiff", experiment_config.parse(arg), AUTHORS)
