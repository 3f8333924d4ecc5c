r"""The embedded default: tiny EnsemDiff on the synthetic lesions, minutes on two CPU cores.

    jdiffseg train --config=configs/default.py --workdir=runs/default
    jdiffseg train --config=configs/default.py:variant=nuclei,mode=mask_only --workdir=runs/nuc_e3

It is `configs/<arch>.py` with `dataset=synthetic,preset=tiny`: the architecture's authors'
training recipe on a CPU-sized model and 32 px images. Arguments: variant (lesion | nuclei |
tissue), mode (diffusion | feedforward | mask_only | image_generation), arch (ensemdiff |
segdiff | medsegdiff).
"""

from __future__ import annotations

import ml_collections

from jdiffseg.config import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The CPU default; `arg` may set variant, mode and arch."""
    return recipes.default_config(arg)
