"""Importers of the authors' PyTorch weights (torch is needed only to read ``.pt`` files)."""

from jdiffseg.models.importers.ensemdiff import load_ensemdiff_state_dict
from jdiffseg.models.importers.medsegdiff import (
    load_medsegdiff_state_dict,
    load_nnunet_state_dict,
)
from jdiffseg.models.importers.segdiff import load_segdiff_state_dict
from jdiffseg.models.importers.torch_state import StateDictError, read_state_dict, strip_prefix

__all__ = [
    "StateDictError",
    "load_ensemdiff_state_dict",
    "load_medsegdiff_state_dict",
    "load_nnunet_state_dict",
    "load_segdiff_state_dict",
    "read_state_dict",
    "strip_prefix",
]
