r"""The embedded default: a tiny EnsemDiff-style model on synthetic lesions, minutes on a CPU.

    jdiffseg train --config=configs/default.py --workdir=runs/default
    jdiffseg train --config=configs/default.py:variant=nuclei,mode=mask_only --workdir=runs/nuc_e3

Every config file starts from `jdiffseg.configlib.base_config()` and overrides what differs, so the
set of keys is the same everywhere and `--config.x.y=v` with an unknown key fails loudly.
"""

from __future__ import annotations

import ml_collections

from jdiffseg.configlib import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The CPU default; `arg` may set variant, mode and arch."""
    args = parse_arg(arg, variant="lesion", mode="diffusion", arch="ensemdiff")
    c = base_config()
    c.data.variant = args.variant
    c.model.mode = args.mode
    c.model.arch = args.arch
    return c
