"""Importers of MedSegDiff checkpoints and of its nnU-Net condition encoder.

The authors' ``UNetModel_newpreview`` / ``UNetModel_v1preview`` is the root module of the
state dict and holds the condition encoder (a ``Generic_UNet``) as ``hwm``:

* our ``unet/...`` ↔ the root UNet keys (see `jdiffseg.models.importers.unet`);
* our ``encoder/enc{d}_conv{i}`` ↔ ``hwm.conv_blocks_context.{d}.blocks.{i}``,
  ``encoder/bottleneck_conv{i}`` ↔ ``hwm.conv_blocks_context.{P}.{i}.blocks.0``,
  ``encoder/dec{u}_conv{i}`` ↔ ``hwm.conv_blocks_localization.{u}.{i}.blocks.0`` and
  ``encoder/seg_out`` ↔ ``hwm.seg_outputs.0``; in each conv block ``conv`` ↔ ``conv`` and
  ``norm`` ↔ ``instnorm`` (the authors' name for their BatchNorm), whose
  ``running_mean``/``running_var`` go to the 'batch_stats' collection (``num_batches_tracked``
  is read and dropped);
* v1 only: ``gate_{d}/conv_a`` ↔ ``hwm.conv_trans_blocks_a.{d}``, ``gate_{d}/conv_b`` ↔
  ``hwm.conv_trans_blocks_b.{d}``, ``gate_{d}/ffparser/complex_weight`` ↔
  ``hwm.ffparser.{d}.complex_weight`` (stored (C, H, W', 2) there, (H, W', C, 2) here).

v1's ``bottleneck_proj`` has no key in the authors' state dicts: their ``forward`` builds that
1x1 conv afresh on every call. It is read from ``hwm.bottleneck_proj.weight`` / ``.bias`` when
the state dict has them (e.g. a conv captured from their forward); otherwise the template's
values are kept, so pass initialised variables (not shape structs) as the template.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jdiffseg.models.importers import unet
from jdiffseg.models.importers.torch_state import TORCH_LEAF, Path, assign, read_state_dict

ENCODER_PREFIX = "hwm."
BOTTLENECK_PROJ_KEYS = ("hwm.bottleneck_proj.weight", "hwm.bottleneck_proj.bias")

_ENC = re.compile(r"^enc(\d+)_conv(\d+)$")
_BOTTLENECK = re.compile(r"^bottleneck_conv(\d+)$")
_DEC = re.compile(r"^dec(\d+)_conv(\d+)$")
_GATE = re.compile(r"^gate_(\d+)$")
_LAYER = {"conv": "conv", "norm": "instnorm"}
_LEAF = {**TORCH_LEAF, "complex_weight": "complex_weight"}
_GATE_LAYER = {"conv_a": "conv_trans_blocks_a", "conv_b": "conv_trans_blocks_b"}


def nnunet_torch_key(path: Path, num_pool: int) -> str:
    """PyTorch key (in ``Generic_UNet``) of a `GenericUNet` variable at ``path``.

    >>> nnunet_torch_key(("bottleneck_conv1", "norm", "mean"), 5)
    'conv_blocks_context.5.1.blocks.0.instnorm.running_mean'
    """
    block, *layers, leaf = path
    if block == "seg_out" and not layers:
        return f"seg_outputs.0.{_LEAF[leaf]}"
    if (m := _ENC.match(block)) is not None:
        head = f"conv_blocks_context.{m[1]}.blocks.{m[2]}"
    elif (m := _BOTTLENECK.match(block)) is not None:
        head = f"conv_blocks_context.{num_pool}.{m[1]}.blocks.0"
    elif (m := _DEC.match(block)) is not None:
        head = f"conv_blocks_localization.{m[1]}.{m[2]}.blocks.0"
    else:
        raise KeyError(f"the nnU-Net encoder has no variable {'/'.join(path)}")
    if len(layers) != 1 or layers[0] not in _LAYER:
        raise KeyError(f"the nnU-Net encoder has no variable {'/'.join(path)}")
    return f"{head}.{_LAYER[layers[0]]}.{_LEAF[leaf]}"


def _num_pool(encoder_variables: Mapping[str, Any]) -> int:
    return sum(1 for name in encoder_variables if _ENC.match(name) and name.endswith("_conv0"))


def _ffparser_to_flax(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Moves the channel axis of the FF-Parser weights last: (C, H, W', 2) -> (H, W', C, 2)."""
    return {
        k: v.transpose(1, 2, 0, 3) if k.endswith(".complex_weight") and v.ndim == 4 else v
        for k, v in state.items()
    }


def _drop_batch_counters(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}


def _template(variables: Mapping[str, Any]) -> dict[str, Any]:
    return {name: variables[name] for name in ("params", "batch_stats") if name in variables}


def medsegdiff_torch_key(path: Path, num_pool: int) -> str:
    """PyTorch key of the MedSegDiff variable at ``(collection, module, ...)``."""
    _, top, *rest = path
    if top == "unet":
        return unet.torch_key(tuple(rest))
    if top == "encoder":
        return ENCODER_PREFIX + nnunet_torch_key(tuple(rest), num_pool)
    if top == "bottleneck_proj":
        return f"{ENCODER_PREFIX}bottleneck_proj.{_LEAF[rest[-1]]}"
    if (m := _GATE.match(top)) is not None and len(rest) == 2:
        layer, leaf = rest
        if layer == "ffparser":
            return f"{ENCODER_PREFIX}ffparser.{m[1]}.{_LEAF[leaf]}"
        if layer in _GATE_LAYER:
            return f"{ENCODER_PREFIX}{_GATE_LAYER[layer]}.{m[1]}.{_LEAF[leaf]}"
    raise KeyError(f"MedSegDiff has no variable {'/'.join(path)} in the authors' model")


def load_medsegdiff_state_dict(
    state_dict: str | os.PathLike[str] | Mapping[str, Any], variables_template: Mapping[str, Any]
) -> dict[str, Any]:
    """MedSegDiff variables {'params', 'batch_stats'} (numpy) from an authors' state dict.

    ``variables_template`` is the model's variables (arrays, or `jax.ShapeDtypeStruct`s except
    for v1's ``bottleneck_proj`` when the state dict lacks it); it fixes the variant, mode and
    sizes. A model without the image branch reports the checkpoint's ``hwm.*`` keys as unknown.
    """
    source = "<mapping>" if isinstance(state_dict, Mapping) else os.fspath(state_dict)
    state = _ffparser_to_flax(_drop_batch_counters(read_state_dict(state_dict)))
    template = _template(variables_template)
    params = dict(template["params"])
    kept_proj = None
    if "bottleneck_proj" in params and not any(k in state for k in BOTTLENECK_PROJ_KEYS):
        kept_proj = params.pop("bottleneck_proj")
        if any(isinstance(v, jax.ShapeDtypeStruct) for v in kept_proj.values()):
            raise ValueError(
                f"state dict {source} has no {BOTTLENECK_PROJ_KEYS[0]} (the authors' v1 "
                "creates that conv inside forward) and the template holds no values for "
                "bottleneck_proj: pass initialised variables as the template"
            )
        template = {**template, "params": params}
    num_pool = _num_pool(params.get("encoder", {}))
    out = assign(state, template, lambda p: medsegdiff_torch_key(p, num_pool), source)
    if kept_proj is not None:
        out["params"]["bottleneck_proj"] = {k: np.asarray(v) for k, v in kept_proj.items()}
    return out


def load_nnunet_state_dict(
    state_dict: str | os.PathLike[str] | Mapping[str, Any],
    variables_template: Mapping[str, Any],
    *,
    prefix: str = "",
) -> dict[str, Any]:
    """Variables of the `NNUNet` baseline from a ``Generic_UNet`` state dict.

    With ``prefix='hwm.'`` it reads MedSegDiff's condition encoder out of a MedSegDiff
    checkpoint (only the keys under that prefix are considered; the v1 gating weights,
    which have no counterpart in the baseline, are not allowed).
    """
    source = "<mapping>" if isinstance(state_dict, Mapping) else os.fspath(state_dict)
    state = _drop_batch_counters(read_state_dict(state_dict))
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    template = _template(variables_template)
    num_pool = _num_pool(template["params"]["unet"])

    def torch_key(path: Path) -> str:
        if path[1] != "unet":
            raise KeyError(f"the nnU-Net baseline has no variable {'/'.join(path)}")
        return nnunet_torch_key(path[2:], num_pool)

    return assign(state, template, torch_key, source)
