"""Importer of EnsemDiff checkpoints written by the authors' PyTorch code.

Their ``UNetModel`` is the root module of the state dict, so its keys map to our ``unet``
submodule (``input_blocks.0.0.weight`` ↔ ``unet/input_blocks_0_0/kernel``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from jdiffseg.models.importers import unet
from jdiffseg.models.importers.torch_state import Path, assign, read_state_dict


def torch_key(path: Path) -> str:
    """PyTorch key of the EnsemDiff parameter at ``path`` (``('unet', ...)``)."""
    if path[0] != "unet":
        raise KeyError(f"EnsemDiff has no parameter {'/'.join(path)} in the authors' model")
    return unet.torch_key(path[1:])


def load_ensemdiff_state_dict(
    state_dict: str | os.PathLike[str] | Mapping[str, Any], params_template: Any
) -> dict[str, Any]:
    """EnsemDiff params (numpy) from an authors' state dict (file or mapping).

    ``params_template`` is the model's 'params' tree (arrays or `jax.ShapeDtypeStruct`s, e.g.
    from `jdiffseg.models.params.abstract_variables`); it fixes the config being loaded.
    """
    source = "<mapping>" if isinstance(state_dict, Mapping) else os.fspath(state_dict)
    return assign(read_state_dict(state_dict), params_template, torch_key, source)
