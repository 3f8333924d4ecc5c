"""Tests of the SegFormer importer on state dicts in transformers' layout (built in
`segformer_support`), and parity with transformers' PyTorch model (run when transformers is
installed)."""

from __future__ import annotations

import functools
import importlib.util
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from segformer_support import TINY, hf_config, hf_state_dict, write_safetensors

from jdiffseg.models import segformer
from jdiffseg.models.importers.segformer import (
    load_segformer_checkpoint,
    load_segformer_state_dict,
    read_safetensors,
)
from jdiffseg.models.importers.torch_state import StateDictError, flatten
from jdiffseg.models.pretrained import load_pretrained
from jdiffseg.models.segformer import SegFormer, segformer_kwargs

SIZE = 32
HAS_TRANSFORMERS = all(
    importlib.util.find_spec(name) for name in ("torch", "transformers", "safetensors")
)


def _model(classes: int = 1, preset: str = "tiny") -> SegFormer:
    return SegFormer(mask_channels=classes, **segformer_kwargs(segformer.PRESETS[preset]))


@functools.cache
def _variables(classes: int = 1):
    """Variables of the tiny model's structure with random values (not its initialisers')."""
    model = _model(classes)
    args = (jnp.zeros((1, SIZE, SIZE, classes)), jnp.zeros((1,)), jnp.zeros((1, SIZE, SIZE, 3)))
    shapes = jax.eval_shape(lambda key: model.init(key, *args), jax.random.key(0))
    rng = np.random.default_rng(classes)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def test_safetensors_reader_reads_the_format(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "n": np.array(5, np.int64)}
    tensors["h"] = np.array([1.5, -2.25, 3e-3], np.float32)
    write_safetensors(tmp_path / "x.safetensors", tensors, bf16=("h",))
    got = read_safetensors(tmp_path / "x.safetensors")
    np.testing.assert_array_equal(got["a"], tensors["a"])
    assert got["n"].shape == () and got["n"] == 5 and got["n"].dtype == np.int64
    # bfloat16 keeps 8 significant bits: exact for 1.5 and -2.25, within 2^-8 for 3e-3
    np.testing.assert_allclose(got["h"], tensors["h"], rtol=2**-8)
    assert got["h"].dtype == np.float32 and got["h"][:2].tolist() == [1.5, -2.25]
    if importlib.util.find_spec("safetensors"):  # and files of the reference writer
        from safetensors.numpy import load_file, save_file

        save_file({"a": tensors["a"]}, tmp_path / "y.safetensors")
        np.testing.assert_array_equal(
            read_safetensors(tmp_path / "y.safetensors")["a"], tensors["a"]
        )
        np.testing.assert_array_equal(load_file(tmp_path / "x.safetensors")["a"], tensors["a"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00{{{{")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors(tmp_path / "bad.safetensors")


def test_full_model_loads_every_key_in_place():
    variables = _variables(1)
    state = hf_state_dict(1)
    messages: list[str] = []
    loaded = load_segformer_state_dict(state, variables, log=messages.append)
    assert messages == []
    want, got = flatten(variables), flatten(loaded)
    assert set(got) == set(want)
    for path, leaf in want.items():
        assert got[path].shape == leaf.shape and got[path].dtype == leaf.dtype, path
    # every key consumed once: the loaded values add up to the state dict's
    total = sum(float(np.sum(v)) for k, v in state.items() if "num_batches" not in k)
    assert np.isclose(sum(float(np.sum(v)) for v in got.values()), total, rtol=1e-5)

    p, enc = loaded["params"], "segformer.encoder"
    block = p["encoder"]["block_1_0"]
    np.testing.assert_array_equal(
        block["attention"]["query"]["kernel"],
        state[f"{enc}.block.1.0.attention.self.query.weight"].T,
    )
    np.testing.assert_array_equal(
        block["attention"]["dense"]["bias"], state[f"{enc}.block.1.0.attention.output.dense.bias"]
    )
    np.testing.assert_array_equal(
        block["attention"]["sr"]["kernel"],
        state[f"{enc}.block.1.0.attention.self.sr.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        block["attention"]["layer_norm"]["scale"],
        state[f"{enc}.block.1.0.attention.self.layer_norm.weight"],
    )
    np.testing.assert_array_equal(
        block["mlp"]["dwconv"]["kernel"][:, :, 0, 5],
        state[f"{enc}.block.1.0.mlp.dwconv.dwconv.weight"][5, 0],
    )
    np.testing.assert_array_equal(
        p["encoder"]["patch_embeddings_0_proj"]["kernel"][:, :, 2, 7],
        state[f"{enc}.patch_embeddings.0.proj.weight"][7, 2],
    )
    np.testing.assert_array_equal(
        p["encoder"]["layer_norm_3"]["bias"], state[f"{enc}.layer_norm.3.bias"]
    )
    np.testing.assert_array_equal(
        p["decode_head"]["linear_c_2"]["kernel"], state["decode_head.linear_c.2.proj.weight"].T
    )
    np.testing.assert_array_equal(
        p["decode_head"]["linear_fuse"]["kernel"][0, 0],
        state["decode_head.linear_fuse.weight"][:, :, 0, 0].T,
    )
    np.testing.assert_array_equal(
        loaded["batch_stats"]["decode_head"]["batch_norm"]["var"],
        state["decode_head.batch_norm.running_var"],
    )


@pytest.mark.parametrize("layout", ["segformer", "bare", "imagenet"])
def test_encoder_checkpoints_keep_the_decode_head(layout):
    """mit-b* style checkpoints: SegformerModel under ``segformer.``, a bare SegformerModel,
    and SegformerForImageClassification (its ImageNet classifier is dropped)."""
    variables = _variables(1)
    state = hf_state_dict(None)
    if layout == "bare":
        state = {k.removeprefix("segformer."): v for k, v in state.items()}
    if layout == "imagenet":
        state["classifier.weight"] = np.zeros((1000, 32), np.float32)
        state["classifier.bias"] = np.zeros((1000,), np.float32)
    messages: list[str] = []
    loaded = load_segformer_state_dict(state, variables, log=messages.append)
    np.testing.assert_array_equal(
        loaded["params"]["encoder"]["layer_norm_2"]["scale"],
        hf_state_dict(None)["segformer.encoder.layer_norm.2.weight"],
    )
    for a, b in zip(
        jax.tree.leaves(loaded["params"]["decode_head"]),
        jax.tree.leaves(variables["params"]["decode_head"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert any("no decode head" in m and "keeps its initialisation" in m for m in messages)
    assert any("classifier.weight" in m for m in messages) == (layout == "imagenet")

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    with pytest.raises(ValueError, match="pass initialised variables"):
        load_segformer_state_dict(state, abstract, log=messages.append)


def test_other_class_count_reinitialises_only_the_classifier():
    variables = _variables(3)
    state = hf_state_dict(150)
    messages: list[str] = []
    loaded = load_segformer_state_dict(state, variables, log=messages.append)
    head = loaded["params"]["decode_head"]
    np.testing.assert_array_equal(
        head["classifier"]["kernel"], variables["params"]["decode_head"]["classifier"]["kernel"]
    )
    np.testing.assert_array_equal(
        head["linear_c_0"]["bias"], state["decode_head.linear_c.0.proj.bias"]
    )
    assert messages == [
        "<mapping>: its decode head predicts 150 classes and the model 3; the classifier of "
        "the decode head is re-initialised"
    ]


def test_unknown_missing_and_misshaped_keys_are_all_listed():
    state = {"module." + k: v for k, v in hf_state_dict(1).items()}
    state["module.decode_head.extra.weight"] = np.zeros((1,), np.float32)
    del state["module.segformer.encoder.block.2.0.mlp.dense1.bias"]
    state["module.segformer.encoder.block.0.0.attention.self.sr.weight"] = np.zeros(
        (8, 8, 2, 2), np.float32
    )
    with pytest.raises(StateDictError) as info:
        load_segformer_state_dict(state, _variables(1))
    err = info.value
    assert err.unknown == ["decode_head.extra.weight"]
    assert len(err.missing) == 1 and "block.2.0.mlp.dense1.bias" in err.missing[0]
    assert len(err.misshaped) == 1 and "block.0.0.attention.self.sr.weight" in err.misshaped[0]
    for key in ("decode_head.extra.weight", "mlp.dense1.bias", "attention.self.sr.weight"):
        assert key in str(err)


def test_checkpoint_directory_checks_config_and_files(tmp_path):
    state = hf_state_dict(1)  # num_batches_tracked included, as transformers writes it
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_segformer_checkpoint(tmp_path, _model(), _variables(1))
    (tmp_path / "config.json").write_text(json.dumps(hf_config(TINY, 1)))
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_segformer_checkpoint(tmp_path, _model(), _variables(1))
    write_safetensors(tmp_path / "model.safetensors", state)
    loaded = load_segformer_checkpoint(tmp_path, _model(), _variables(1))
    np.testing.assert_array_equal(
        loaded["params"]["decode_head"]["classifier"]["bias"], state["decode_head.classifier.bias"]
    )
    # same shapes, other heads: only config.json tells
    config = dict(hf_config(TINY, 1), num_attention_heads=[1, 2, 2, 2])
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"num_attention_heads=\[1, 2, 2, 2\] \(model: \[1, 1, 2, 2\]\)"
    ):
        load_segformer_checkpoint(tmp_path, _model(), _variables(1))


# ---------------------------------------------------------------- parity with transformers


def _perturb_norms(model) -> None:
    """Random affine LayerNorm/BatchNorm parameters, running statistics and biases (the
    initialisers leave them at 1/0, which would hide mapping errors)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            tensors = [getattr(module, n, None) for n in ("weight", "bias")]
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                tensors[0].copy_(torch.rand(tensors[0].shape, generator=gen) + 0.5)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=gen))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            if isinstance(tensors[1], torch.Tensor):
                tensors[1].copy_(torch.rand(tensors[1].shape, generator=gen) - 0.5)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs torch, transformers and safetensors")
@pytest.mark.parametrize(
    "preset,size,classes,weights",
    [("b0", 64, 1, "model.safetensors"), ("b1", 96, 3, "pytorch_model.bin")],
)
def test_parity_with_transformers(tmp_path, preset, size, classes, weights):
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    fields = segformer.PRESETS[preset]
    config = SegformerConfig(
        hidden_sizes=list(fields["segformer_hidden_sizes"]),
        depths=list(fields["segformer_depths"]),
        decoder_hidden_size=fields["segformer_decoder_channels"],
        num_labels=classes,
    )
    reference = SegformerForSemanticSegmentation(config).eval()
    _perturb_norms(reference)
    reference.save_pretrained(tmp_path)
    if weights == "pytorch_model.bin":  # the same keys through torch's format
        from safetensors.torch import load_file

        path = tmp_path / "model.safetensors"
        torch.save(load_file(path), tmp_path / weights)
        path.unlink()

    model = _model(classes, preset)
    image = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype(np.float32)
    x_t, t = jnp.zeros((1, size, size, classes)), jnp.zeros((1,))
    template = jax.eval_shape(lambda key: model.init(key, x_t, t, image), jax.random.key(0))
    variables = load_segformer_checkpoint(tmp_path, model, template)

    @jax.jit
    def run(variables, image):
        out, state = model.apply(
            variables, x_t, t, image, capture_intermediates=lambda m, _: m.name == "decode_head"
        )
        return out["out"], state["intermediates"]["decode_head"]["__call__"][0]

    out, quarter = map(np.asarray, run(variables, image))
    with torch.no_grad():
        logits = reference(torch.from_numpy(image.transpose(0, 3, 1, 2))).logits
        full = torch.nn.functional.interpolate(
            logits, size=(size, size), mode="bilinear", align_corners=False
        )
    want, want_full = (x.numpy().transpose(0, 2, 3, 1) for x in (logits, full))
    assert quarter.shape == want.shape == (1, size // 4, size // 4, classes)
    assert np.abs(want).max() > 0.05  # not a trivially small output
    np.testing.assert_allclose(quarter, want, rtol=0, atol=2e-6)
    np.testing.assert_allclose(out, want_full, rtol=0, atol=2e-6)


def test_load_pretrained_only_for_segformer(tmp_path):
    variables = _variables(1)
    config = ml_collections.ConfigDict(dict(arch="segformer", pretrained=""))
    assert load_pretrained(config, _model(), variables) is variables
    config.arch, config.pretrained = "nnunet", str(tmp_path)
    with pytest.raises(ValueError, match=r"not for model\.arch='nnunet'"):
        load_pretrained(config, _model(), variables)
    config.arch = "segformer"
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_pretrained(config, _model(), variables)
