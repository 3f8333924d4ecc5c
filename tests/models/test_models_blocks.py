"""Shared UNet blocks against closed forms and independent NumPy references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.models.blocks import (
    AttentionBlock,
    Conv2d,
    Dense,
    Downsample,
    GroupNorm32,
    ResBlock,
    Upsample,
    timestep_embedding,
)
from jdiffseg.models.unet import UNet, unet_layout


def np_conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Direct NHWC/HWIO convolution with symmetric zero padding (PyTorch semantics)."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = w.shape[0]
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, w)
    return out + b


def np_group_norm(x: np.ndarray, groups: int, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    b, c = x.shape[0], x.shape[-1]
    g = x.reshape(b, -1, groups, c // groups).astype(np.float64)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * scale + bias


def randomize(params, seed: int = 0):
    """Every leaf random (zero-initialised layers included); NumPy, so nothing compiles."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (0.3 * rng.normal(size=x.shape)).astype(np.float32), params)


@pytest.mark.parametrize("dim", [8, 9, 32])
def test_timestep_embedding_closed_form(dim):
    t = np.array([0, 1, 7, 999], np.int32)
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = t[:, None] * freqs[None]
    want = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    if dim % 2:
        want = np.concatenate([want, np.zeros((4, 1))], axis=-1)
    got = timestep_embedding(jnp.asarray(t), dim)
    assert got.shape == (4, dim) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)
    np.testing.assert_array_equal(np.asarray(got[0, :half]), 1.0)  # cos(0) comes first


def test_timestep_embedding_fractional_and_max_period():
    t = jnp.array([2.5])
    got = timestep_embedding(t, 4, max_period=100.0)
    freqs = np.exp(-math.log(100.0) * np.arange(2) / 2)
    want = np.concatenate([np.cos(2.5 * freqs), np.sin(2.5 * freqs)])
    np.testing.assert_allclose(np.asarray(got[0]), want, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 5, 6, 64), (3, 7, 32)])
def test_group_norm_matches_numpy(shape):
    rng = np.random.default_rng(8)
    x = rng.normal(3.0, 2.0, shape).astype(np.float32)
    gn = GroupNorm32()
    params = randomize(gn.init(jax.random.key(0), x))
    got = gn.apply(params, x)
    p = params["params"]
    want = np_group_norm(x, 32, np.asarray(p["scale"]), np.asarray(p["bias"]))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def test_group_norm_bf16_computes_in_float32():
    rng = np.random.default_rng(9)
    x = rng.normal(100.0, 0.5, (1, 4, 4, 32)).astype(np.float32)  # large mean: fp32 needed
    gn = GroupNorm32(dtype=jnp.bfloat16)
    params = gn.init(jax.random.key(0), x)
    assert params["params"]["scale"].dtype == jnp.float32
    got = gn.apply(params, jnp.asarray(x, jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    xb = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
    want = np_group_norm(xb, 32, np.ones(32), np.zeros(32))
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.05)


def test_group_norm_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="not divisible"):
        GroupNorm32().init(jax.random.key(0), jnp.ones((1, 2, 2, 48)))


@pytest.mark.parametrize("size", [8, 7])
def test_downsample_pads_one_on_each_side(size):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    down = Downsample(use_conv=True, out_channels=4)
    params = randomize(down.init(jax.random.key(0), x))
    got = np.asarray(down.apply(params, x))
    p = params["params"]["op"]
    want = np_conv2d(x, np.asarray(p["kernel"]), np.asarray(p["bias"]), stride=2, pad=1)
    assert got.shape == (2, math.ceil(size / 2), math.ceil(size / 2), 4)
    np.testing.assert_allclose(got, want, atol=1e-5)
    if size % 2 == 0:  # Flax/XLA 'SAME' pads (0, 1) here and would shift every output pixel
        same = jax.lax.conv_general_dilated(
            x, p["kernel"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        assert not np.allclose(np.asarray(same) + np.asarray(p["bias"]), want, atol=1e-3)


@pytest.mark.parametrize("size", [8, 7])
def test_downsample_avg_pool(size):
    rng = np.random.default_rng(14)
    x = rng.normal(size=(1, size, size, 2)).astype(np.float32)
    got = np.asarray(Downsample(use_conv=False).apply({}, x))
    n = size // 2
    want = x[:, : 2 * n, : 2 * n].reshape(1, n, 2, n, 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_upsample_nearest_then_conv():
    rng = np.random.default_rng(15)
    x = rng.normal(size=(1, 3, 5, 2)).astype(np.float32)
    up = Upsample(use_conv=True, out_channels=3)
    params = randomize(up.init(jax.random.key(0), x))
    got = np.asarray(up.apply(params, x))
    rep = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    p = params["params"]["conv"]
    np.testing.assert_allclose(
        got, np_conv2d(rep, np.asarray(p["kernel"]), np.asarray(p["bias"]), 1, 1), atol=1e-5
    )
    assert np.asarray(Upsample(use_conv=False).apply({}, x)).shape == (1, 6, 10, 2)


def test_torch_default_and_zero_init():
    x = jnp.ones((1, 4, 4, 8))
    k = Conv2d(16).init(jax.random.key(0), x)["params"]
    bound = 1 / math.sqrt(3 * 3 * 8)
    for leaf in (k["kernel"], k["bias"]):
        assert float(jnp.max(jnp.abs(leaf))) <= bound
        assert float(jnp.std(leaf)) > 0.4 * bound
    z = Conv2d(16, zero_init=True).init(jax.random.key(0), x)["params"]
    assert not np.any(np.asarray(z["kernel"])) and not np.any(np.asarray(z["bias"]))
    d = Dense(5).init(jax.random.key(0), jnp.ones((2, 64)))["params"]
    assert d["kernel"].shape == (64, 5) and float(jnp.max(jnp.abs(d["kernel"]))) <= 1 / 8


def np_legacy_attention(x, p, heads):
    """QKVAttentionLegacy in the PyTorch (B, C, T) layout, written from its definition."""
    b, hh, ww, c = x.shape
    xt = x.reshape(b, hh * ww, c).transpose(0, 2, 1)  # (B, C, T)
    n = np_group_norm(x.reshape(b, -1, c), 32, p["norm"]["scale"], p["norm"]["bias"])
    w_qkv = np.asarray(p["qkv"]["kernel"]).T  # torch Conv1d weight (3C, C)
    qkv = (
        np.einsum("oc,bct->bot", w_qkv, n.transpose(0, 2, 1))
        + np.asarray(p["qkv"]["bias"])[:, None]
    )
    ch = c // heads
    qkv = qkv.reshape(b * heads, 3 * ch, -1)
    q, k, v = qkv[:, :ch], qkv[:, ch : 2 * ch], qkv[:, 2 * ch :]
    s = 1 / math.sqrt(math.sqrt(ch))
    wgt = np.einsum("bct,bcs->bts", q * s, k * s)
    wgt = np.exp(wgt - wgt.max(-1, keepdims=True))
    wgt /= wgt.sum(-1, keepdims=True)
    a = np.einsum("bts,bcs->bct", wgt, v).reshape(b, c, -1)
    h = (
        np.einsum("oc,bct->bot", np.asarray(p["proj_out"]["kernel"]).T, a)
        + np.asarray(p["proj_out"]["bias"])[:, None]
    )
    return (xt + h).transpose(0, 2, 1).reshape(x.shape)


@pytest.mark.parametrize(("heads", "head_channels"), [(1, -1), (4, -1), (1, 16)])
def test_attention_legacy_layout(heads, head_channels):
    rng = np.random.default_rng(19)
    x = rng.normal(size=(2, 3, 5, 64)).astype(np.float32)
    attn = AttentionBlock(num_heads=heads, num_head_channels=head_channels)
    params = randomize(attn.init(jax.random.key(0), x))
    got = np.asarray(attn.apply(params, x))
    n_heads = heads if head_channels == -1 else 64 // head_channels
    want = np_legacy_attention(x, jax.tree.map(np.asarray, params["params"]), n_heads)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_attention_is_identity_at_init():
    rng = np.random.default_rng(20)
    x = rng.normal(size=(1, 4, 4, 32)).astype(np.float32)
    attn = AttentionBlock(num_heads=2)
    out = attn.apply(attn.init(jax.random.key(0), x), x)
    np.testing.assert_allclose(np.asarray(out), x, atol=1e-6)


def test_resblock_init_is_skip_and_options():
    rng = np.random.default_rng(21)
    x = rng.normal(size=(2, 8, 8, 32)).astype(np.float32)
    emb = rng.normal(size=(2, 128)).astype(np.float32)
    same = ResBlock()
    v = same.init(jax.random.key(0), x, emb)
    assert "skip" not in v["params"]
    np.testing.assert_allclose(np.asarray(same.apply(v, x, emb)), x, atol=1e-6)

    wider = ResBlock(out_channels=64, use_scale_shift_norm=True)
    v = wider.init(jax.random.key(0), x, emb)
    assert v["params"]["emb_proj"]["kernel"].shape == (128, 128)  # scale and shift
    sk = v["params"]["skip"]
    want = np_conv2d(x, np.asarray(sk["kernel"]), np.asarray(sk["bias"]), 1, 0)
    np.testing.assert_allclose(np.asarray(wider.apply(v, x, emb)), want, atol=1e-5)

    for kw, size in ((dict(down=True), 4), (dict(up=True), 16)):
        blk = ResBlock(**kw)
        out = blk.apply(blk.init(jax.random.key(0), x, emb), x, emb)
        assert out.shape == (2, size, size, 32)


def test_resblock_dropout_uses_rng_only_in_training():
    rng = np.random.default_rng(22)
    x = rng.normal(size=(2, 4, 4, 32)).astype(np.float32)
    emb = rng.normal(size=(2, 128)).astype(np.float32)
    blk = ResBlock(dropout=0.5)
    v = randomize(blk.init(jax.random.key(0), x, emb))
    a = blk.apply(v, x, emb, True, rngs={"dropout": jax.random.key(1)})
    b = blk.apply(v, x, emb, True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(blk.apply(v, x, emb)), blk.apply(v, x, emb))


def test_unet_layout_matches_guided_diffusion_structure():
    lay = unet_layout(
        in_channels=4,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(2,),
    )
    kinds = [[ly.kind for ly in blk] for blk in lay.input_blocks]
    assert kinds == [["conv"], ["res"], ["down"], ["res", "attn"]]
    assert [[ly.kind for ly in blk] for blk in lay.output_blocks] == [
        ["res", "attn"],
        ["res", "attn", "up"],
        ["res"],
        ["res"],
    ]
    assert [blk[0].in_channels for blk in lay.output_blocks] == [128, 96, 96, 64]


def _tiny_unet(**kw) -> UNet:
    return UNet(
        in_channels=2,
        out_channels=2,
        model_channels=32,
        channel_mult=(1,),
        num_res_blocks=1,
        attention_resolutions=(1,),
        **kw,
    )


def test_unet_bf16_and_remat():
    rng = np.random.default_rng(25)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 2)), jnp.float32)
    t = jnp.array([3, 50])
    ref = _tiny_unet()
    params = randomize(jax.eval_shape(ref.init, jax.random.key(0), x, t)["params"])

    def loss(model, p):
        return jnp.mean(model.apply({"params": p}, x, t) ** 2)

    # remat changes memory, not values: same loss, and it differentiates (static `train`).
    value, grads = jax.jit(jax.value_and_grad(lambda p: loss(_tiny_unet(remat=True), p)))(params)
    np.testing.assert_allclose(float(value), float(jax.jit(lambda p: loss(ref, p))(params)), 1e-5)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["input_blocks_0_0"]["kernel"]).sum()) > 0

    bf16 = _tiny_unet(dtype=jnp.bfloat16)
    v = jax.eval_shape(bf16.init, jax.random.key(0), x, t)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(v))
    out_bf16 = jax.jit(bf16.apply)({"params": params}, x, t)
    out_f32 = jax.jit(ref.apply)({"params": params}, x, t)
    assert out_bf16.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(out_f32)))
    assert float(jnp.max(jnp.abs(out_bf16 - out_f32))) < 0.1 * scale


def test_unet_rejects_wrong_input_channels():
    with pytest.raises(ValueError, match="expected 2"):
        jax.eval_shape(
            _tiny_unet().init,
            jax.random.key(0),
            jnp.ones((1, 8, 8, 3)),
            jnp.zeros((1,), jnp.int32),
        )


def test_unet_first_add_enters_first_feature_map():
    rng = np.random.default_rng(27)
    x = jnp.asarray(rng.normal(size=(1, 8, 8, 2)), jnp.float32)
    t = jnp.array([5])
    unet = _tiny_unet()
    params = randomize(jax.eval_shape(unet.init, jax.random.key(0), x, t)["params"])
    feat = jnp.asarray(rng.normal(size=(1, 8, 8, 32)), jnp.float32)

    @jax.jit
    def first_features(first_add):
        emb = unet.apply({"params": params}, t, method="embed")
        return unet.apply({"params": params}, x, emb, first_add, method="encode")[0]

    np.testing.assert_allclose(
        np.asarray(first_features(feat) - first_features(jnp.zeros_like(feat))),
        np.asarray(feat),
        atol=1e-5,
    )
