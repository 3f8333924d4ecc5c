"""The experiment recipes: one architecture × dataset × mode × preset. The files in `configs/`
are thin front ends over `get_config(arch, arg)`, so every architecture accepts the same
arguments and the study, the demo and sweeps work from any install:

    dataset = synthetic | isic2016 | monuseg | her2   (synthetic: variant = lesion|nuclei|tissue)
    mode    = diffusion (E2) | feedforward (E1) | mask_only (E3) | image_generation (E4)
    preset  = paper (the authors' 256 px settings) | tiny (a CPU-sized model at 32 px);
              SegFormer: b0 .. b5 (the published sizes) | tiny
    scale   = paper | tiny: the image size and training length (by default the preset's;
              paper for b0 .. b5)

What depends on the mode rather than the architecture is set here: E1 trains a plain segmenter
(sigmoid output, no σ channels); E3 predicts x0 directly with a fixed variance, so its loss is the
x0 MSE the analysis compares against; E4 keeps the architecture's diffusion settings.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jdiffseg.config.parsing import parse_arg
from jdiffseg.config.schema import base_config
from jdiffseg.models import apply_preset
from jdiffseg.models.modes import MODES

DATASETS = ("synthetic", "isic2016", "monuseg", "her2")
# The synthetic flavour that stands in for each real dataset.
SYNTHETIC_FOR = {"isic2016": "lesion", "monuseg": "nuclei", "her2": "tissue"}
PRESETS = ("paper", "tiny")
SCALES = ("paper", "tiny")
# Architectures whose presets are not paper/tiny.
ARCH_PRESETS = {"segformer": ("b0", "b1", "b2", "b3", "b4", "b5", "tiny")}

# The guided-diffusion recipe EnsemDiff and MedSegDiff share (their authors' README flags):
# T=1000 linear, ε with a learned-range σ trained by MSE + VB, {0,1} masks, AdamW 1e-4 constant,
# EMA 0.9999, evaluation by 5 full-chain DDPM samples fused by their mean.
GUIDED_DIFFUSION: dict[str, Any] = {
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
    "eval.ensemble_size": 5,
    "eval.sampler": "ddpm",
    "eval.sampling_steps": 0,
    "eval.fusion": "mean",
}


def parse(
    arg: str | None, *, mode: str = "diffusion", presets: tuple[str, ...] = PRESETS
) -> ml_collections.ConfigDict:
    """The common `get_config` arguments (dataset, variant, mode, preset, scale), validated;
    an empty scale becomes the preset's (paper for presets other than tiny)."""
    args = parse_arg(arg, dataset="synthetic", variant="lesion", mode=mode, preset="tiny", scale="")
    for key, allowed in (("dataset", DATASETS), ("mode", MODES), ("preset", presets)):
        if args[key] not in allowed:
            raise ValueError(f"config argument {key}={args[key]!r} is not one of {allowed}")
    args.scale = args.scale or ("tiny" if args.preset == "tiny" else "paper")
    if args.scale not in SCALES:
        raise ValueError(f"config argument scale={args.scale!r} is not one of {SCALES}")
    return args


def build(arch: str, args: ml_collections.ConfigDict, overrides: dict[str, Any]) -> Any:
    """A full config: base tree, then the arch's preset, then `overrides` (dotted keys, the
    authors' hyperparameters), then what the dataset, mode and scale imply."""
    c = base_config()
    c.model.mode = args.mode
    apply_preset(c.model, arch, args.preset)
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        c[section][key] = value

    c.data.name = args.dataset
    c.data.variant = args.variant
    if args.scale == "paper":
        c.data.image_size = 256
        c.train.steps = 100_000
        c.train.log_every = 100
        c.train.eval_every = 5_000
        c.train.checkpoint_every = 5_000
    else:  # sized for two CPU cores: a run takes minutes
        c.data.image_size = 32
        c.data.batch_size = 8
        c.data.eval_batch_size = 16
        c.train.steps = 1_000
        c.train.lr = 3e-4
        c.train.warmup_steps = 100
        c.train.ema_decay = 0.999
        c.train.log_every = 100
        c.train.eval_every = 250
        c.train.checkpoint_every = 250
        c.eval.sampling_steps = 25

    if args.mode == "feedforward":
        c.model.learn_sigma = False
        c.diffusion.use_vb = False
    elif args.mode == "mask_only":
        c.model.learn_sigma = False
        c.diffusion.prediction = "x0"
        c.diffusion.variance = "fixed_large"
        c.diffusion.use_vb = False
    return c


# The authors' hyperparameters per architecture, over the base tree and the preset.
ARCH_RECIPES: dict[str, dict[str, Any]] = {
    # EnsemDiff (Wolleb et al. 2022): image channels and x_t concatenated, batch 10.
    "ensemdiff": {
        **GUIDED_DIFFUSION,
        "data.batch_size": 10,
        "data.eval_batch_size": 10,
    },
    # SegDiff (Amit et al. 2021), its medical script: T=100 linear rescaled by 1000/T, the raw t
    # fed to the network, fixed large variance, no x0 clipping, {-1, 1} masks, per-image summed
    # squared error, batch 2 (MoNuSeg), 9 samples fused by their mean.
    "segdiff": {
        "diffusion.num_timesteps": 100,
        "diffusion.schedule": "linear",
        "diffusion.prediction": "eps",
        "diffusion.variance": "fixed_large",
        "diffusion.use_vb": False,
        "diffusion.mask_encoding": "plus_minus_one",
        "diffusion.loss_reduction": "sum",
        "diffusion.rescale_timesteps": False,
        "diffusion.clip_x0": False,
        "train.lr": 1e-4,
        "train.weight_decay": 0.0,
        "train.warmup_steps": 0,
        "train.lr_schedule": "constant",
        "train.ema_decay": 0.9999,
        "data.batch_size": 2,
        "data.eval_batch_size": 2,
        "eval.ensemble_size": 9,
        "eval.sampler": "ddpm",
        "eval.sampling_steps": 0,
        "eval.fusion": "mean",
    },
    # MedSegDiff (Wu et al. 2023): the guided recipe plus its calibration loss, batch 8.
    "medsegdiff": {
        **GUIDED_DIFFUSION,
        "train.cal_loss_weight": 10.0,
        "data.batch_size": 8,
        "data.eval_batch_size": 8,
    },
    # The nnU-Net-style feed-forward baseline: AdamW 3e-4, warm-up and cosine decay, batch 16.
    "nnunet": {
        "train.lr": 3e-4,
        "train.weight_decay": 1e-4,
        "train.warmup_steps": 100,
        "train.lr_schedule": "cosine",
        "train.ema_decay": 0.999,
        "data.batch_size": 16,
        "data.eval_batch_size": 16,
    },
    # SegFormer (Xie et al. 2021): AdamW 6e-5, weight decay 0.01, 1500 warm-up steps and a
    # decay to 0 (cosine here, their polynomial of power 1), batch 16.
    "segformer": {
        "train.lr": 6e-5,
        "train.weight_decay": 0.01,
        "train.warmup_steps": 1500,
        "train.lr_schedule": "cosine",
        "train.ema_decay": 0.999,
        "data.batch_size": 16,
        "data.eval_batch_size": 16,
    },
}
# Architectures that only segment feed-forward (E1).
FEEDFORWARD_ONLY = ("nnunet", "segformer")


def get_config(arch: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe of `arch`; `arg` like "dataset=isic2016,mode=diffusion,preset=paper"."""
    if arch not in ARCH_RECIPES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCH_RECIPES)}")
    feedforward_only = arch in FEEDFORWARD_ONLY
    args = parse(
        arg,
        mode="feedforward" if feedforward_only else "diffusion",
        presets=ARCH_PRESETS.get(arch, PRESETS),
    )
    if feedforward_only and args.mode != "feedforward":
        raise ValueError(f"configs/{arch}.py trains feed-forward only, got mode={args.mode!r}")
    return build(arch, args, ARCH_RECIPES[arch])


def default_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The CPU default: an architecture's recipe on the synthetic data at the tiny preset;
    `arg` may set variant, mode and arch."""
    args = parse_arg(arg, variant="lesion", mode="diffusion", arch="ensemdiff")
    return get_config(
        args.arch, f"dataset=synthetic,variant={args.variant},mode={args.mode},preset=tiny"
    )
