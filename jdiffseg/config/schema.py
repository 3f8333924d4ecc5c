"""The schema: every key a run understands, with CPU-friendly defaults.

A run's `config.json` is this tree resolved; `--config.a.b=v` may set only keys listed here
(configs are locked), so a typo fails and names itself. Keys whose values are a choice are
checked where they are used; the rater keys' checks live here (`rater_count`, `rater_choice`).
"""

from __future__ import annotations

import re
from typing import Any

import ml_collections
from ml_collections import config_dict

# The named choices of the keys that pick among a multi-rater example's masks; a rater index
# (k or 'rater<k>') is accepted too.
RATER_CHOICES = {"data.train_rater": ("random", "majority"), "eval.reference": ("majority", "all")}


def base_config() -> ml_collections.ConfigDict:
    """All keys a run understands, with CPU-friendly defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic"  # synthetic | isic2016 | monuseg | her2 | folder | nnunet | brats
    c.data.variant = "lesion"  # synthetic: lesion | nuclei | tissue; folder: a label for the data
    c.data.num_classes = 1  # foreground classes; >= 2: label maps, one-hot masks (C + 1 channels)
    c.data.image_size = 64
    c.data.data_dir = ""  # prepared datasets; '' = the TFDS default (~/tensorflow_datasets)
    c.data.manual_dir = ""  # real datasets' original archives; '' = <data_dir>/downloads/manual
    c.data.batch_size = 16  # global, over all processes and devices
    c.data.eval_batch_size = 16
    c.data.num_workers = 0  # grain worker processes; 0 reads in the main process
    c.data.prefetch = 2  # train batches put on the devices ahead by a thread; 0 = off
    c.data.num_train_examples = 512  # synthetic only
    c.data.num_val_examples = 64
    c.data.num_test_examples = 128
    c.data.seed = 0  # the data's own seed (synthetic generation, validation carving)
    c.data.val_fraction = 0.1  # carved from train where a dataset has no validation split
    c.data.test_fraction = 0.2  # folder datasets without a split file
    c.data.split_file = ""  # folder datasets; default manual_dir/splits.json if present
    c.data.tile_size = 512  # MoNuSeg tiles are resized to this before patching
    c.data.patch_stride = 0  # MoNuSeg patch stride; 0 = image_size
    # Volumetric datasets (nnunet, brats): 2D slices of NIfTI volumes.
    c.data.slice_axis = 2  # the voxel axis slices are taken along
    c.data.target = "foreground"  # the mask: foreground | classes | a class | a region name
    c.data.empty_slices = 1.0  # fraction of target-free training slices kept (1 all, 0 none)
    c.data.crop_nonzero = True  # crop each case in-plane to its non-zero region
    # Several annotators per image (synthetic: simulated; folder, her2, nnunet: <name>_rater<k>
    # label files); `mask` then holds their majority, `raters` every rater's mask.
    c.data.raters = 0  # annotators per image; 0 or 1: one mask (the exact one for synthetic)
    c.data.rater_strength = 0.5  # synthetic: annotator variability in [0, 1]; 0 = exact copies
    c.data.train_rater = "random"  # the training mask: random (a rater per step) | majority | k
    c.data.augment = ml_collections.ConfigDict()
    c.data.augment.flip = True
    c.data.augment.rot90 = True
    c.data.augment.crop_scale = 1.0  # min area fraction of a random resized crop; 1.0 = off
    c.data.augment.color_jitter = 0.0  # brightness/contrast/saturation/hue strength; 0 = off

    c.model = ml_collections.ConfigDict()
    c.model.arch = "ensemdiff"  # ensemdiff | segdiff | medsegdiff | nnunet | segformer
    c.model.preset = "tiny"
    c.model.mode = "diffusion"  # diffusion | feedforward | mask_only | image_generation
    c.model.dtype = "float32"  # compute dtype; params and normalisation stay float32
    c.model.remat = False
    c.model.base_channels = 32
    c.model.channel_mult = (1, 2, 2)
    c.model.num_res_blocks = 1
    c.model.attention_resolutions = (4,)  # downsampling factors with attention
    c.model.num_heads = 1
    c.model.num_head_channels = -1
    c.model.dropout = 0.0
    c.model.use_scale_shift_norm = False
    c.model.resblock_updown = False
    c.model.learn_sigma = False
    c.model.num_heads_upsample = -1  # -1: num_heads
    c.model.conv_resample = True  # convolutions in the up/downsampling layers
    c.model.norm_groups = 32  # GroupNorm groups of the UNet
    c.model.rrdb_blocks = 2  # SegDiff image encoder
    c.model.rrdb_channels = 32
    c.model.rrdb_growth = 32
    c.model.medsegdiff_version = "new"  # new | v1
    c.model.encoder_base_channels = 8  # nnU-Net-style condition encoder / baseline
    c.model.encoder_max_channels = 64
    c.model.encoder_num_pool = 5  # downsampling stages of the encoder
    c.model.encoder_norm = "batch"  # batch | instance
    c.model.encoder_dropout = 0.5
    c.model.segformer_hidden_sizes = (8, 16, 32, 32)  # SegFormer: widths of the 4 stages
    c.model.segformer_depths = (1, 1, 1, 1)  # Transformer blocks per stage
    c.model.segformer_num_heads = (1, 1, 2, 2)
    c.model.segformer_sr_ratios = (4, 2, 1, 1)  # key/value reduction per stage
    c.model.segformer_mlp_ratio = 4
    c.model.segformer_decoder_channels = 32
    c.model.segformer_drop_path = 0.1  # stochastic depth of the last block
    c.model.segformer_head_dropout = 0.1
    c.model.pretrained = ""  # SegFormer: a transformers checkpoint directory to start from

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.num_timesteps = 100
    c.diffusion.schedule = "linear"  # linear | cosine | custom
    c.diffusion.custom_betas = config_dict.placeholder(tuple)
    c.diffusion.prediction = "eps"  # eps | x0 | v
    c.diffusion.variance = "fixed_small"  # fixed_small | fixed_large | learned_range
    c.diffusion.mask_encoding = "zero_one"  # zero_one | plus_minus_one
    c.diffusion.loss_reduction = "mean"  # mean over pixels | sum per image (SegDiff)
    c.diffusion.use_vb = False
    c.diffusion.timestep_sampling = "uniform"  # uniform | range | importance | weights
    c.diffusion.t_min = 0
    c.diffusion.t_max = -1  # -1: T - 1
    c.diffusion.timestep_weights = config_dict.placeholder(tuple)
    c.diffusion.clip_x0 = True
    c.diffusion.rescale_timesteps = False  # True: the network sees t*1000/T

    c.train = ml_collections.ConfigDict()
    c.train.steps = 2000
    c.train.lr = 3e-4
    c.train.warmup_steps = 100
    c.train.lr_schedule = "cosine"  # constant | cosine
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.999
    c.train.ema_warmup = True  # decay min(ema_decay, (1 + step) / (10 + step))
    c.train.grad_accum = 1
    c.train.feedforward_t = 0  # the fixed timestep a feed-forward model sees
    c.train.cal_loss_weight = 10.0  # MedSegDiff calibration loss
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2
    c.train.tensorboard = False  # also write TensorBoard events (needs jdiffseg[tensorboard])
    c.train.best_metric = "dice"  # validation metric that picks the best checkpoint
    c.train.lock_timeout = 300.0  # s: a workdir lock not refreshed for this long is taken over
    c.train.fsdp = False
    # Populations: K replicas trained in one compiled step (jdiffseg.config.population).
    c.train.population = 1
    c.train.population_overrides = ""  # per replica: "seed=0,1,2;train.lr=1e-4,3e-4,1e-3"
    c.train.population_data = "shared"  # data order: shared (base seed) | per_replica (own seed)
    # Devices along the mesh's replica axis: R > 1 splits the replicas over R groups of devices,
    # each group splitting the batch (a 2-D replica x data mesh); 1: one 'data' axis
    c.train.replica_devices = 1
    c.train.distributed = False  # call jax.distributed.initialize()
    c.train.coordinator_address = config_dict.placeholder(str)
    c.train.num_processes = config_dict.placeholder(int)
    c.train.process_id = config_dict.placeholder(int)

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"
    c.eval.checkpoint = "best"  # best | latest
    c.eval.use_ema = True
    c.eval.ensemble_size = 5
    c.eval.sampler = "ddim"  # ddpm | ddim | dpmpp_2m | dpmpp_3m (DPM-Solver++)
    c.eval.sampling_steps = 25  # DDIM's respaced or DPM-Solver++'s steps; 0 = the full chain
    c.eval.eta = 0.0  # DDIM: 0 deterministic, 1 DDPM's marginals
    c.eval.dpm_spacing = "logsnr"  # DPM-Solver++ time grid: logsnr | time_uniform | time_quadratic
    c.eval.dpm_lower_order_final = True  # DPM-Solver++: lower the order over the last steps
    c.eval.fusion = "mean"  # mean | majority | staple
    c.eval.threshold = 0.5
    c.eval.num_bins = 10
    c.eval.num_examples = -1  # -1: the whole split
    # Multi-rater data: the val/test `mask`: majority | rater<k> (or k) | all (majority, and the
    # batch also carries `raters` (b, R, H, W, 1))
    c.eval.reference = "majority"
    c.eval.band_px = 2.0  # with reference 'all': width of the boundary band of the band ECE
    c.eval.ff_ensemble = "none"  # feed-forward test-time ensemble: none | flip | dropout
    c.eval.ff_ensemble_size = 8  # its members (flip: at most 8, the square's symmetries)
    c.eval.extra_protocols = ""  # comma-separated reference protocols, e.g. "threshold_sweep"
    c.eval.num_cases = 4  # images in the case-grid figure
    # write every member (float16), the mask and any raters per image to samples.npz, for
    # scoring sub-ensembles or other metrics later without sampling again
    c.eval.save_members = False
    c.eval.bootstrap_resamples = 2000  # for the 95 % intervals of per-image means
    c.eval.val_ensemble_size = 2  # during training
    c.eval.val_sampling_steps = 10
    c.eval.val_num_examples = 32

    c.analysis = ml_collections.ConfigDict()
    c.analysis.split = "validation"
    c.analysis.num_images = 32
    c.analysis.t_stride = 1
    c.analysis.chunk_size = 16  # timesteps evaluated together
    c.analysis.seed = 0  # the fixed noise: image i gets fold_in(seed, i) at every t
    c.analysis.checkpoint = "best"  # best | latest | a step number, for every analysed run
    c.analysis.use_ema = True
    # Adapted diffusion: the image's contribution Δ(t) = recovery with image − without.
    c.analysis.adapt_metric = "mse"  # mse | dice | iou: the recovery measure behind Δ(t)
    c.analysis.adapt_reference = "blank"  # blank | mask_only: "without the image"
    c.analysis.adapt_fraction = 0.1  # range: timesteps where Δ(t) >= fraction · max Δ
    c.analysis.adapt_floor = 0.1  # weights/schedule: min weight relative to the peak of Δ
    c.analysis.adapt_class = ""  # multi-class runs: adapt to this class; '' = the class average
    return c


def rater_count(data: ml_collections.ConfigDict) -> int:
    """The annotators per image `data.raters` asks for: 0 for one mask (0 or 1), else R >= 2;
    checks `data.rater_strength` too."""
    raters = data.raters
    if isinstance(raters, bool) or not isinstance(raters, int) or raters < 0:
        raise ValueError(f"config.data.raters={raters!r} must be an integer >= 0")
    strength = data.rater_strength
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) \
            or not 0.0 <= strength <= 1.0:
        raise ValueError(f"config.data.rater_strength={strength!r} must lie in [0, 1]")
    return raters if raters >= 2 else 0


def rater_choice(config: ml_collections.ConfigDict, key: str) -> str | int:
    """The value of `key` ('data.train_rater' or 'eval.reference'; the default where `config`
    lacks the section): one of its named choices, or a rater index from k or 'rater<k>'."""
    section, name = key.split(".")
    given = section in config and name in config[section]
    value: Any = (config if given else base_config())[section][name]
    if isinstance(value, str) and value in RATER_CHOICES[key]:
        return value
    found = re.fullmatch(r"(?:rater)?(\d+)", value) if isinstance(value, str) else None
    if found:
        return int(found.group(1))
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(
        f"config.{key}={value!r} is not one of {RATER_CHOICES[key]}, a rater index k or "
        f"'rater<k>'")
