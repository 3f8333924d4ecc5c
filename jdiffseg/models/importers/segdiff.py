"""Importer of SegDiff checkpoints written by the authors' PyTorch code.

Their ``UNetModel`` is the root module and holds the image encoder as ``rrdb``: our
``unet/...`` maps to the root keys and our ``rrdb/...`` to ``rrdb.*``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from jdiffseg.models.importers import unet
from jdiffseg.models.importers.torch_state import Path, assign, read_state_dict


def torch_key(path: Path) -> str:
    """PyTorch key of the SegDiff parameter at ``path`` (``('unet', ...)``/``('rrdb', ...)``)."""
    if path[0] == "unet":
        return unet.torch_key(path[1:])
    if path[0] == "rrdb":
        return "rrdb." + unet.torch_key(path[1:])
    raise KeyError(f"SegDiff has no parameter {'/'.join(path)} in the authors' model")


def load_segdiff_state_dict(
    state_dict: str | os.PathLike[str] | Mapping[str, Any], params_template: Any
) -> dict[str, Any]:
    """SegDiff params (numpy) from an authors' state dict (file or mapping).

    A model without the image branch ('mask_only', 'image_generation') has no ``rrdb`` and
    reports the checkpoint's ``rrdb.*`` keys as unknown.
    """
    source = "<mapping>" if isinstance(state_dict, Mapping) else os.fspath(state_dict)
    return assign(read_state_dict(state_dict), params_template, torch_key, source)
