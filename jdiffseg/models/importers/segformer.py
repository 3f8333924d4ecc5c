"""Importer of HuggingFace-format SegFormer checkpoints (``config.json`` + weights).

A checkpoint directory holds ``config.json`` and ``model.safetensors`` (read here with numpy)
or ``pytorch_model.bin`` (read with torch). Keys are in the layout
transformers writes (its original names): ``segformer.encoder.*`` and ``decode_head.*`` for
``SegformerForSemanticSegmentation``; ``encoder.*`` for a bare ``SegformerModel``; the
ImageNet-pretrained ``mit-b*`` encoders (``SegformerForImageClassification``) add a
``classifier.*`` head, which is dropped with a message.

Our variables ↔ transformers' keys (see `hf_key`):

* ``encoder/patch_embeddings_{i}_proj|_layer_norm`` ↔ ``segformer.encoder.patch_embeddings.{i}.
  proj|layer_norm``; ``encoder/layer_norm_{i}`` ↔ ``segformer.encoder.layer_norm.{i}``;
* ``encoder/block_{i}_{j}/...`` ↔ ``segformer.encoder.block.{i}.{j}....`` with, inside a block,
  ``attention/query|key|value|sr|layer_norm`` ↔ ``attention.self.<same>``, ``attention/dense``
  ↔ ``attention.output.dense``, ``mlp/dwconv`` ↔ ``mlp.dwconv.dwconv``, other names the same;
* ``decode_head/linear_c_{i}`` ↔ ``decode_head.linear_c.{i}.proj``, other names the same;
  BatchNorm's ``mean``/``var`` ('batch_stats') ↔ ``running_mean``/``running_var``
  (``num_batches_tracked`` is dropped).

Loading is strict (`torch_state.assign`). Two parts may be kept from the template instead, each
with a message: the whole decode head when the checkpoint has none (an encoder checkpoint), and
the decode head's classifier when the checkpoint predicts another number of classes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path as FilePath
from typing import Any

import jax
import numpy as np

from jdiffseg.models.importers.torch_state import (
    TORCH_LEAF,
    Path,
    assign,
    flatten,
    read_state_dict,
    unflatten,
)
from jdiffseg.models.segformer import PATCH_SIZES, STRIDES, SegFormer

PREFIX = "segformer."
HEAD = "decode_head."
IMAGENET_HEAD = ("classifier.weight", "classifier.bias")
CLASSIFIER = (HEAD + "classifier.weight", HEAD + "classifier.bias")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_PATCH = re.compile(r"^patch_embeddings_(\d+)_(proj|layer_norm)$")
_STAGE_NORM = re.compile(r"^layer_norm_(\d+)$")
_BLOCK = re.compile(r"^block_(\d+)_(\d+)$")
_LINEAR_C = re.compile(r"^linear_c_(\d+)$")
_ATTENTION = {name: f"self.{name}" for name in ("query", "key", "value", "sr", "layer_norm")}
_ATTENTION["dense"] = "output.dense"
_LEAF = TORCH_LEAF


def _no_variable(path: Path) -> KeyError:
    return KeyError(f"SegFormer has no variable {'/'.join(path)} in transformers' layout")


def _encoder_key(modules: list[str], path: Path) -> str:
    name, *rest = modules
    if (m := _PATCH.match(name)) and not rest:
        return f"patch_embeddings.{m[1]}.{m[2]}"
    if (m := _STAGE_NORM.match(name)) and not rest:
        return f"layer_norm.{m[1]}"
    if (m := _BLOCK.match(name)) and rest:
        if rest[0] == "attention" and len(rest) == 2 and rest[1] in _ATTENTION:
            inner = f"attention.{_ATTENTION[rest[1]]}"
        elif rest == ["mlp", "dwconv"]:
            inner = "mlp.dwconv.dwconv"
        else:
            inner = ".".join(rest)
        return f"block.{m[1]}.{m[2]}.{inner}"
    raise _no_variable(path)


def hf_key(path: Path) -> str:
    """transformers' key of the variable at ``(collection, module, ...)``.

    >>> hf_key(("params", "encoder", "block_2_1", "attention", "sr", "kernel"))
    'segformer.encoder.block.2.1.attention.self.sr.weight'
    """
    _, top, *modules, leaf = path
    if leaf not in _LEAF or not modules:
        raise _no_variable(path)
    if top == "encoder":
        head = PREFIX + "encoder." + _encoder_key(modules, path)
    elif top == "decode_head" and len(modules) == 1:
        m = _LINEAR_C.match(modules[0])
        head = HEAD + (f"linear_c.{m[1]}.proj" if m else modules[0])
    else:
        raise _no_variable(path)
    return f"{head}.{_LEAF[leaf]}"


def _normalise_keys(
    state: Mapping[str, np.ndarray], source: str, log: Callable[[str], None]
) -> dict[str, np.ndarray]:
    """Adds the ``segformer.`` prefix of a bare ``SegformerModel``, drops the batch counter and
    the ImageNet classifier of a ``mit-b*`` encoder (saying so)."""
    bare = not any(k.startswith(PREFIX) for k in state)
    out = {}
    for key, value in state.items():
        if key.endswith(".num_batches_tracked"):
            continue
        if bare and key.startswith("encoder."):
            key = PREFIX + key
        out[key] = value
    if all(k in out for k in IMAGENET_HEAD) and not any(k.startswith(HEAD) for k in out):
        for key in IMAGENET_HEAD:
            del out[key]
        log(f"{source}: dropped the image-classification head {list(IMAGENET_HEAD)}")
    return out


def _template(variables: Mapping[str, Any]) -> dict[Path, Any]:
    return flatten({k: variables[k] for k in ("params", "batch_stats") if k in variables})


def _keep(flat: dict[Path, Any], kept: list[Path], why: str, source: str) -> dict[Path, Any]:
    """Template values of ``kept`` (checked to be arrays, not shape structs)."""
    values = {p: flat.pop(p) for p in kept}
    if any(isinstance(v, jax.ShapeDtypeStruct) for v in values.values()):
        raise ValueError(
            f"state dict {source}: {why}, so it keeps the template's values; pass initialised "
            "variables (not shape structs) as the template"
        )
    return {p: np.asarray(v) for p, v in values.items()}


def _load(
    state: Mapping[str, np.ndarray],
    source: str,
    variables_template: Mapping[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    state = _normalise_keys(state, source, log)
    flat = _template(variables_template)
    head = [p for p in flat if p[1] == "decode_head"]
    kept: dict[Path, Any] = {}
    if not any(k.startswith(HEAD) for k in state):
        why = "it has no decode head (an encoder checkpoint)"
        kept = _keep(flat, head, why, source)
        log(f"{source}: {why}; the decode head keeps its initialisation")
    elif CLASSIFIER[1] in state:
        ours = flat[("params", "decode_head", "classifier", "bias")].shape[0]
        theirs = state[CLASSIFIER[1]].shape[0]
        if theirs != ours:
            why = f"its decode head predicts {theirs} classes and the model {ours}"
            kept = _keep(flat, [p for p in head if p[2] == "classifier"], why, source)
            state = {k: v for k, v in state.items() if k not in CLASSIFIER}
            log(f"{source}: {why}; the classifier of the decode head is re-initialised")
    loaded = flatten(assign(state, unflatten(flat), hf_key, source))
    return unflatten({**loaded, **kept})


def load_segformer_state_dict(
    state_dict: str | os.PathLike[str] | Mapping[str, Any],
    variables_template: Mapping[str, Any],
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`SegFormer` variables {'params', 'batch_stats'} (numpy) from a transformers state dict
    (a mapping, or a ``.bin``/``.pt``/``.npz`` file).

    ``variables_template`` is the model's variables (arrays, or `jax.ShapeDtypeStruct`s when
    the checkpoint fills every one); it fixes the sizes. Shapes are checked, not the number of
    attention heads: `load_segformer_checkpoint` also checks ``config.json``.
    """
    source = "<mapping>" if isinstance(state_dict, Mapping) else os.fspath(state_dict)
    return _load(read_state_dict(state_dict), source, variables_template, log)


# safetensors dtype names -> numpy dtypes (BF16 is widened to float32 by `read_safetensors`).
SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as numpy arrays (bfloat16 widened to float32).

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's
    dtype, shape and byte range, and the raw little-endian data; reading it needs no package.
    """
    raw = FilePath(path).read_bytes()
    size = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a safetensors file: {err}") from err
    data = memoryview(raw)[8 + size :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
        array = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array.astype(array.dtype.newbyteorder("="))
    return out


def _read_weights(directory: FilePath) -> tuple[dict[str, np.ndarray], str]:
    """The state dict in ``model.safetensors`` or else ``pytorch_model.bin``, and its path."""
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            read = read_safetensors if name.endswith(".safetensors") else read_state_dict
            return read(path), os.fspath(path)
    raise FileNotFoundError(f"{directory} has neither of {list(WEIGHT_FILES)}")


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def check_hf_config(hf_config: Mapping[str, Any], model: SegFormer, source: str) -> None:
    """Raises unless transformers' ``config.json`` describes the architecture of ``model``.

    The decoder's width and class count are left to the weights' shapes.
    """
    want = {
        "num_encoder_blocks": len(PATCH_SIZES),
        "patch_sizes": list(PATCH_SIZES),
        "strides": list(STRIDES),
        "hidden_sizes": list(model.hidden_sizes),
        "depths": list(model.depths),
        "num_attention_heads": list(model.num_heads),
        "sr_ratios": list(model.sr_ratios),
        "mlp_ratios": [model.mlp_ratio] * len(PATCH_SIZES),
    }
    bad = [
        f"{key}={hf_config.get(key)!r} (model: {value!r})"
        for key, value in want.items()
        if key in hf_config and _as_list(hf_config[key]) != value
    ]
    if hf_config.get("hidden_act", "gelu") != "gelu":
        bad.append(f"hidden_act={hf_config['hidden_act']!r} (model: 'gelu')")
    if bad:
        raise ValueError(f"{source} describes another SegFormer: {'; '.join(bad)}")


def load_segformer_checkpoint(
    directory: str | os.PathLike[str],
    model: SegFormer,
    variables_template: Mapping[str, Any],
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Variables of ``model`` from a transformers checkpoint directory (``config.json`` and
    ``model.safetensors`` or ``pytorch_model.bin``): the encoder always, the decode head when
    the checkpoint has one (see `load_segformer_state_dict`)."""
    root = FilePath(directory)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {root} (a transformers SegFormer checkpoint)")
    hf_config = json.loads(config_path.read_text())
    check_hf_config(hf_config, model, os.fspath(config_path))
    weights, source = _read_weights(root)
    return _load(weights, source, variables_template, log)
