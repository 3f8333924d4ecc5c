"""Architecture presets: the authors' published 256 px settings ('paper') and tiny test sizes.

Keys are `config.model` field names. ``attention_resolutions`` are downsampling factors (the
authors' flag ``--attention_resolutions 16`` at 256 px is factor 16).

* EnsemDiff 'paper': Wolleb et al.'s README flags (128 channels, 2 res blocks, 1 head,
  attention at 1/16, learned σ, no scale-shift norm) with the 256 px channel multipliers.
* SegDiff 'paper': the MoNuSeg script (``deeper_net``: 7 levels, 3 res blocks, 4 heads,
  attention at 1/16 and 1/32, fixed σ, no scale-shift norm) with ``--rrdb_blocks 12``.

MedSegDiff and the nnU-Net and SegFormer baselines keep their presets in their own modules
(``PRESETS``); `presets_for` finds them. `apply_preset` writes a preset into a config;
`resolve` reads a model's fields from a config, taking fields the config does not define from
its named preset.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

UNET_FIELDS = (
    "base_channels",
    "channel_mult",
    "num_res_blocks",
    "attention_resolutions",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "dropout",
    "use_scale_shift_norm",
    "resblock_updown",
    "conv_resample",
    "norm_groups",
    "learn_sigma",
)
RRDB_FIELDS = ("rrdb_blocks", "rrdb_channels", "rrdb_growth")

UNET_DEFAULTS: dict[str, Any] = dict(
    num_head_channels=-1,
    num_heads_upsample=-1,
    dropout=0.0,
    use_scale_shift_norm=False,
    resblock_updown=False,
    conv_resample=True,
    norm_groups=32,
)

# guided-diffusion's 256 px UNet flags, which EnsemDiff and MedSegDiff both train with.
GUIDED_DIFFUSION_256: dict[str, Any] = dict(
    UNET_DEFAULTS,
    base_channels=128,
    channel_mult=(1, 1, 2, 2, 4, 4),
    num_res_blocks=2,
    attention_resolutions=(16,),
    num_heads=1,
    learn_sigma=True,
)

# The CPU-sized UNet the tiny presets share: 32 channels, 3 levels, attention at 1/4.
TINY_UNET: dict[str, Any] = dict(
    UNET_DEFAULTS,
    base_channels=32,
    channel_mult=(1, 2, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "ensemdiff": {
        "paper": dict(GUIDED_DIFFUSION_256),
        "tiny": dict(TINY_UNET, num_heads=1, learn_sigma=True),
    },
    "segdiff": {
        "paper": dict(
            UNET_DEFAULTS,
            base_channels=128,
            channel_mult=(1, 1, 1, 2, 2, 4, 4),
            num_res_blocks=3,
            attention_resolutions=(16, 32),
            num_heads=4,
            learn_sigma=False,
            rrdb_blocks=12,
            rrdb_channels=64,
            rrdb_growth=32,
        ),
        "tiny": dict(
            TINY_UNET,
            num_heads=2,
            learn_sigma=False,
            rrdb_blocks=1,
            rrdb_channels=16,
            rrdb_growth=8,
        ),
    },
}


def presets_for(arch: str) -> Mapping[str, Mapping[str, Any]]:
    """The presets of ``arch``: here for the UNet-based EnsemDiff and SegDiff, and the
    ``PRESETS`` of ``jdiffseg.models.<arch>`` for the others (MedSegDiff, the baselines)."""
    if arch in PRESETS:
        return PRESETS[arch]
    try:
        module = importlib.import_module(f"jdiffseg.models.{arch}")
    except ModuleNotFoundError as err:
        raise KeyError(f"unknown arch {arch!r}: no module jdiffseg.models.{arch}") from err
    return getattr(module, "PRESETS", {})


def get_preset(arch: str, name: str) -> dict[str, Any]:
    """A copy of the preset ``name`` of ``arch``."""
    table = presets_for(arch)
    if name not in table:
        raise KeyError(f"unknown preset {name!r} for {arch!r}; known: {sorted(table)}")
    return dict(table[name])


def apply_preset(model_config: Any, arch: str, name: str) -> None:
    """Writes preset ``name`` into ``model_config`` (fields the config has) and sets
    ``arch``/``preset``; fields it lacks are read from the preset later by `resolve`."""
    for key, value in get_preset(arch, name).items():
        if key in model_config:
            model_config[key] = value
    model_config.arch = arch
    model_config.preset = name


def resolve(model_config: Any, arch: str, fields: Sequence[str]) -> dict[str, Any]:
    """The values of ``fields`` for ``arch``: the config's, else the named preset's.

    A field neither defines raises, naming the field, the arch and the preset.
    """
    name = model_config.get("preset")
    preset: Mapping[str, Any] = presets_for(arch).get(name, {})
    out, missing = {}, []
    for key in fields:
        value = model_config.get(key, preset.get(key))
        if value is None:
            missing.append(key)
        out[key] = value
    if missing:
        raise KeyError(
            f"config.model lacks {missing} and preset {name!r} of {arch!r} does not define them"
        )
    return out
