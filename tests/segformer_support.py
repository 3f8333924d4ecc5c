"""SegFormer checkpoints in transformers' layout, built with numpy for the tests.

The keys are enumerated from transformers' constructor rules (``segformer.encoder.
patch_embeddings/block/layer_norm``, ``attention.self.*``, ``attention.output.dense``,
``mlp.dense1/dwconv.dwconv/dense2``, ``decode_head.linear_c.{i}.proj/linear_fuse/batch_norm/
classifier``), independently of the importer; ``.safetensors`` files are written from the
format's definition.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jdiffseg.models import segformer

TINY = segformer.PRESETS["tiny"]


def hf_shapes(preset: dict, classes: int | None, in_channels: int = 3) -> dict[str, tuple]:
    """Keys and shapes of ``SegformerForSemanticSegmentation`` (``classes=None``: the encoder
    of ``SegformerModel`` under the ``segformer.`` prefix)."""
    shapes: dict[str, tuple] = {}

    def linear(key: str, cin: int, cout: int) -> None:
        shapes[f"{key}.weight"], shapes[f"{key}.bias"] = (cout, cin), (cout,)

    def conv(key: str, cin: int, cout: int, k: int, groups: int = 1) -> None:
        shapes[f"{key}.weight"], shapes[f"{key}.bias"] = (cout, cin // groups, k, k), (cout,)

    def norm(key: str, c: int) -> None:
        shapes[f"{key}.weight"], shapes[f"{key}.bias"] = (c,), (c,)

    enc, cin = "segformer.encoder", in_channels
    widths = preset["segformer_hidden_sizes"]
    for i, c in enumerate(widths):
        conv(f"{enc}.patch_embeddings.{i}.proj", cin, c, segformer.PATCH_SIZES[i])
        norm(f"{enc}.patch_embeddings.{i}.layer_norm", c)
        for j in range(preset["segformer_depths"][i]):
            block, hidden = f"{enc}.block.{i}.{j}", c * preset["segformer_mlp_ratio"]
            norm(f"{block}.layer_norm_1", c)
            for name in ("query", "key", "value"):
                linear(f"{block}.attention.self.{name}", c, c)
            r = preset["segformer_sr_ratios"][i]
            if r > 1:
                conv(f"{block}.attention.self.sr", c, c, r)
                norm(f"{block}.attention.self.layer_norm", c)
            linear(f"{block}.attention.output.dense", c, c)
            norm(f"{block}.layer_norm_2", c)
            linear(f"{block}.mlp.dense1", c, hidden)
            conv(f"{block}.mlp.dwconv.dwconv", hidden, hidden, 3, groups=hidden)
            linear(f"{block}.mlp.dense2", hidden, c)
        norm(f"{enc}.layer_norm.{i}", c)
        cin = c
    if classes is None:
        return shapes
    dec = preset["segformer_decoder_channels"]
    for i, c in enumerate(widths):
        linear(f"decode_head.linear_c.{i}.proj", c, dec)
    shapes["decode_head.linear_fuse.weight"] = (dec, 4 * dec, 1, 1)
    norm("decode_head.batch_norm", dec)
    shapes["decode_head.batch_norm.running_mean"] = (dec,)
    shapes["decode_head.batch_norm.running_var"] = (dec,)
    shapes["decode_head.batch_norm.num_batches_tracked"] = ()
    conv("decode_head.classifier", dec, classes, 1)
    return shapes


def hf_state_dict(classes: int | None = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """A random state dict of the tiny preset in transformers' layout."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in hf_shapes(TINY, classes).items():
        if key.endswith("num_batches_tracked"):
            state[key] = np.array(11, np.int64)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            state[key] = rng.normal(size=shape).astype(np.float32)
    return state


def write_safetensors(path, tensors: dict[str, np.ndarray], bf16: tuple[str, ...] = ()) -> None:
    """A ``.safetensors`` file written from the format's definition (``bf16``: keys stored as
    bfloat16, by truncating float32)."""
    header, chunks, offset = {}, [], 0
    names = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
    for key, value in tensors.items():
        value = np.asarray(value)
        if key in bf16:
            data, dtype = (value.astype(np.float32).view(np.uint32) >> 16).astype("<u2"), "BF16"
        else:
            data, dtype = value, names[value.dtype]
        raw = data.tobytes()
        header[key] = {
            "dtype": dtype,
            "shape": list(value.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + b"".join(chunks))


def hf_config(preset: dict, classes: int) -> dict:
    return dict(
        architectures=["SegformerForSemanticSegmentation"],
        num_channels=3,
        num_encoder_blocks=4,
        hidden_sizes=list(preset["segformer_hidden_sizes"]),
        depths=list(preset["segformer_depths"]),
        num_attention_heads=list(preset["segformer_num_heads"]),
        sr_ratios=list(preset["segformer_sr_ratios"]),
        mlp_ratios=[preset["segformer_mlp_ratio"]] * 4,
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        decoder_hidden_size=preset["segformer_decoder_channels"],
        hidden_act="gelu",
        id2label={str(i): str(i) for i in range(classes)},
    )


def write_checkpoint(directory: Path, classes: int | None = 1, seed: int = 0) -> dict:
    """A tiny-preset checkpoint directory (``config.json``, ``model.safetensors``); returns
    its state dict. ``classes=None``: an encoder checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    state = hf_state_dict(classes, seed)
    (directory / "config.json").write_text(json.dumps(hf_config(TINY, classes or 1)))
    write_safetensors(directory / "model.safetensors", state)
    return state
