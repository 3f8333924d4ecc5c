"""Tests of the SegFormer model: sizes against transformers' counts, blocks against NumPy."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jdiffseg.models import build_model, segformer
from jdiffseg.models.params import count_params
from jdiffseg.models.segformer import (
    EfficientSelfAttention,
    MixBlock,
    MixFFN,
    SegFormer,
    drop_path_rates,
    segformer_kwargs,
)

# transformers' SegformerForSemanticSegmentation(SegformerConfig(...)) with the published
# B0..B5 settings: sum(p.numel() for p in model.parameters()) for 1 and 150 labels.
HF_PARAMS = {
    "b0": (3_714_401, 3_752_694),
    "b1": (13_677_505, 13_715_798),
    "b2": (27_347_393, 27_461_974),
    "b3": (47_223_233, 47_337_814),
    "b4": (63_993_793, 64_108_374),
    "b5": (84_594_113, 84_708_694),
}


def _key(seed: int) -> jax.Array:
    """A PRNG key; 'rbg' compiles far faster than threefry on CPU, which keeps init cheap."""
    return jax.random.key(seed, impl="rbg")


def random_variables(module, *args, seed: int = 0):
    """Variables of ``module``'s structure with random values (cheaper than compiling init)."""
    shapes = jax.eval_shape(lambda key: module.init(key, *args), _key(0))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        if path[-1].key == "var":
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        return (0.3 * rng.normal(size=s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def closed_form_params(preset: dict, classes: int, in_channels: int = 3) -> int:
    """Parameters of SegFormer counted layer by layer from its definition."""
    widths = preset["segformer_hidden_sizes"]
    mlp, dec = preset["segformer_mlp_ratio"], preset["segformer_decoder_channels"]
    total, c_in = 0, in_channels
    for i, c in enumerate(widths):
        k = segformer.PATCH_SIZES[i]
        total += k * k * c_in * c + c + 2 * c  # patch conv + LayerNorm
        r = preset["segformer_sr_ratios"][i]
        block = 2 * c + 4 * (c * c + c) + 2 * c  # two LayerNorms, q/k/v/out projections
        block += (r * r * c * c + c + 2 * c) if r > 1 else 0  # reduction conv + LayerNorm
        h = mlp * c
        block += (c * h + h) + (9 * h + h) + (h * c + c)  # dense, depth-wise conv, dense
        total += preset["segformer_depths"][i] * block + 2 * c  # blocks + stage LayerNorm
        c_in = c
    total += sum(c * dec + dec for c in widths)  # linear_c
    total += 4 * dec * dec + 2 * dec  # bias-free fuse conv + BatchNorm scale/bias
    return total + dec * classes + classes


@pytest.mark.parametrize("name", sorted(HF_PARAMS))
def test_closed_form_count_equals_transformers(name):
    binary, ade = HF_PARAMS[name]
    assert closed_form_params(segformer.PRESETS[name], 1) == binary
    assert closed_form_params(segformer.PRESETS[name], 150) == ade


@pytest.mark.parametrize("name,classes", [("b0", 150), ("b1", 1), ("tiny", 3)])
def test_model_parameter_count_equals_closed_form(name, classes):
    model = SegFormer(mask_channels=classes, **segformer_kwargs(segformer.PRESETS[name]))
    count = count_params(model, (1, 64, 64, classes), (1, 64, 64, 3))
    assert count == closed_form_params(segformer.PRESETS[name], classes)


def test_drop_path_rates_rise_linearly():
    np.testing.assert_allclose(drop_path_rates((2, 2, 2, 2), 0.1), np.linspace(0, 0.1, 8))
    assert drop_path_rates((1,), 0.3) == [0.0]


def _numpy_attention(params: dict, x: np.ndarray, heads: int, sr: int) -> np.ndarray:
    """Efficient self-attention with the reduction conv written as a patch matmul."""
    b, h, w, c = x.shape

    def dense(name: str, y: np.ndarray) -> np.ndarray:
        return y @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])

    kv = x
    if sr > 1:
        patches = x.reshape(b, h // sr, sr, w // sr, sr, c).transpose(0, 1, 3, 2, 4, 5)
        kernel = np.asarray(params["sr"]["kernel"]).reshape(sr * sr * c, c)
        kv = patches.reshape(b, h // sr, w // sr, -1) @ kernel + np.asarray(params["sr"]["bias"])
        mean, var = kv.mean(-1, keepdims=True), kv.var(-1, keepdims=True)
        norm = params["layer_norm"]
        kv = (kv - mean) / np.sqrt(var + 1e-5) * np.asarray(norm["scale"]) + np.asarray(
            norm["bias"]
        )
    d = c // heads
    q = dense("query", x).reshape(b, -1, heads, d)
    k = dense("key", kv).reshape(b, -1, heads, d)
    v = dense("value", kv).reshape(b, -1, heads, d)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, h, w, c)
    return dense("dense", out)


@pytest.mark.parametrize("sr", [1, 2])
def test_efficient_attention_matches_numpy(sr):
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 8)).astype(np.float32)
    layer = EfficientSelfAttention(num_heads=2, sr_ratio=sr)
    params = random_variables(layer, x)["params"]
    got = np.asarray(jax.jit(layer.apply)({"params": params}, x))
    np.testing.assert_allclose(got, _numpy_attention(params, x, 2, sr), atol=2e-5)
    assert ("sr" in params) == (sr > 1)


def test_mix_ffn_matches_numpy():
    x = np.random.default_rng(1).normal(size=(1, 5, 4, 3)).astype(np.float32)
    layer = MixFFN(hidden=6)
    p = random_variables(layer, x)["params"]
    y = x @ p["dense1"]["kernel"] + p["dense1"]["bias"]
    padded = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
    kernel = p["dwconv"]["kernel"][:, :, 0, :]  # (3, 3, channels)
    conv = sum(
        padded[:, i : i + 5, j : j + 4, :] * kernel[i, j] for i in range(3) for j in range(3)
    )
    conv = conv + p["dwconv"]["bias"]
    gelu = 0.5 * conv * (1 + np.vectorize(math.erf)(conv / math.sqrt(2)))  # exact GELU
    want = gelu @ p["dense2"]["kernel"] + p["dense2"]["bias"]
    got = jax.jit(layer.apply)({"params": p}, x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_stochastic_depth_drops_whole_branches_in_training_only():
    x = jax.random.normal(_key(0), (64, 2, 2, 4))
    x = jnp.tile(x[:1], (64, 1, 1, 1))  # 64 copies of one sample
    blocks = [MixBlock(1, 1, 1, drop_path=rate) for rate in (1.0, 0.5)]
    variables = random_variables(blocks[0], x, False)

    @jax.jit
    def run(variables, x, key):
        rngs = {"dropout": key}
        return (
            blocks[0].apply(variables, x, True, rngs=rngs),
            blocks[0].apply(variables, x, False),
            blocks[1].apply(variables, x, True, rngs=rngs),
        )

    dropped, evaluated, half = map(np.asarray, run(variables, x, _key(2)))
    # every branch dropped: the block is the identity while training, not in evaluation
    np.testing.assert_array_equal(dropped, x)
    assert not np.allclose(evaluated, x)
    # rate 0.5: masks are drawn per sample, so equal inputs give two kinds of output
    kinds = {bool(np.allclose(o, half[0])) for o in half}
    assert kinds == {True, False}


def test_training_forward_updates_batch_stats_and_upsamples_quarter_logits():
    model = SegFormer(mask_channels=3, **segformer_kwargs(segformer.PRESETS["tiny"]))
    image = jax.random.uniform(_key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    x_t, t = jnp.zeros((2, 32, 32, 3)), jnp.zeros((2,), jnp.int32)
    variables = random_variables(model, x_t, t, image)
    assert set(variables) == {"params", "batch_stats"}

    @jax.jit
    def run(variables, key):
        return model.apply(
            variables,
            x_t,
            t,
            image,
            train=True,
            mutable=["batch_stats", "intermediates"],
            rngs={"dropout": key},
            capture_intermediates=lambda m, _: m.name == "decode_head",
        )

    out, updates = run(variables, _key(2))
    out, quarter = out["out"], updates["intermediates"]["decode_head"]["__call__"][0]
    assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32
    assert quarter.shape == (2, 8, 8, 3)
    # the full-resolution logits are the 1/4 ones upsampled
    np.testing.assert_allclose(out, segformer.resize_bilinear(quarter, 32, 32), atol=1e-6)
    before = variables["batch_stats"]["decode_head"]["batch_norm"]["mean"]
    assert not np.allclose(updates["batch_stats"]["decode_head"]["batch_norm"]["mean"], before)


def test_bad_calls_name_the_problem():
    tiny = segformer_kwargs(segformer.PRESETS["tiny"])
    image, x_t, t = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16, 1)), jnp.zeros((1,))
    with pytest.raises(ValueError, match="only supports mode='feedforward'"):
        SegFormer(mode="diffusion", **tiny).init(_key(0), x_t, t, image)
    with pytest.raises(ValueError, match="needs `image`"):
        SegFormer(**tiny).init(_key(0), x_t, t, None)
    with pytest.raises(ValueError, match="4 entries each"):
        SegFormer(**{**tiny, "depths": (1, 1, 1)}).init(_key(0), x_t, t, image)
    with pytest.raises(ValueError, match="smaller than its sequence reduction ratio 8"):
        b0 = SegFormer(**segformer_kwargs(segformer.PRESETS["b0"]))
        jax.eval_shape(b0.init, _key(0), x_t, t, image)


def test_build_reads_preset_and_config_overrides():
    config = ml_collections.ConfigDict(
        dict(arch="segformer", preset="b2", mode="feedforward", dtype="float32")
    )
    model = build_model(config, image_channels=3, mask_channels=2)
    assert isinstance(model, SegFormer) and model.mask_channels == 2
    assert model.depths == (3, 4, 6, 3) and model.decoder_channels == 768
    config.segformer_depths = [1, 1, 1, 1]
    assert build_model(config, image_channels=3).depths == (1, 1, 1, 1)
