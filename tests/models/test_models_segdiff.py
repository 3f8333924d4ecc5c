"""SegDiff: the RRDB image branch, modes, shapes, parameter counts, overfitting one batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_models_ensemdiff import inputs, numpy_params, overfit

from jdiffseg.config.schema import base_config
from jdiffseg.models import MODES, apply_preset, build_model, count_params, tree_size
from jdiffseg.models.rrdb import RRDBNet

TINY = dict(
    base_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(2,),
    num_heads=2,
    learn_sigma=False,
    rrdb_blocks=1,
    rrdb_channels=16,
)


def tiny_config(mode: str, **over) -> ml_collections.ConfigDict:
    c = base_config()
    apply_preset(c.model, "segdiff", "tiny")
    c.model.mode = mode
    for k, v in {**TINY, **over}.items():
        c.model[k] = v
    return c.model


EXPECTED = {  # mode -> (UNet input channels, output channels, has RRDB)
    "diffusion": (1, 1, True),
    "feedforward": (1, 1, True),
    "mask_only": (1, 1, False),
    "image_generation": (3, 3, False),
}


@pytest.mark.parametrize("mode", MODES)
def test_shapes_dtypes_and_image_branch(mode):
    model = build_model(tiny_config(mode), image_channels=3)
    x_t, t, image = inputs(mode)
    variables = jax.eval_shape(model.init, jax.random.key(0), x_t, t, image)
    in_ch, out_ch, has_rrdb = EXPECTED[mode]
    params = variables["params"]
    assert params["unet"]["input_blocks_0_0"]["kernel"].shape == (3, 3, in_ch, 32)
    assert ("rrdb" in params) == has_rrdb
    out = jax.eval_shape(model.apply, variables, x_t, t, image)
    assert out["out"].shape == (2, 8, 8, out_ch) and out["out"].dtype == jnp.float32


def test_image_features_are_added_after_the_first_conv():
    model = build_model(tiny_config("diffusion"), image_channels=3)
    x_t, t, image = inputs("diffusion")
    abstract = jax.eval_shape(model.init, jax.random.key(0), x_t, t, image)["params"]
    params = numpy_params(abstract)  # all random: zero-initialised convs would hide the image
    unet, rrdb = model.unet, model.rrdb

    @jax.jit
    def outputs(params):
        out = model.apply({"params": params}, x_t, t, image)["out"]
        feats = rrdb.apply({"params": params["rrdb"]}, image)
        manual = unet.apply({"params": params["unet"]}, x_t, t, feats)
        other = model.apply({"params": params}, x_t, t, -image)["out"]
        return out, feats, manual, other

    out, feats, manual, other = outputs(params)
    assert feats.shape == (2, 8, 8, 32)
    np.testing.assert_allclose(np.asarray(out), np.asarray(manual), atol=1e-6)
    assert float(jnp.max(jnp.abs(other - out))) > 1e-4


def rrdb_param_count(c_in: int, nf: int, gc: int, blocks: int, c_out: int) -> int:
    """ESRGAN trunk, counted by hand: 3x3 convs with bias."""

    def conv(i: int, o: int) -> int:
        return 9 * i * o + o

    rdb = sum(conv(nf + k * gc, gc) for k in range(4)) + conv(nf + 4 * gc, nf)
    return conv(c_in, nf) + blocks * 3 * rdb + 2 * conv(nf, nf) + conv(nf, c_out)


def test_rrdb_structure_and_count():
    net = RRDBNet(out_channels=128, num_blocks=12)
    image = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    shapes = jax.eval_shape(net.init, jax.random.key(0), image)["params"]
    assert sorted(shapes) == sorted(
        ["conv_first", "trunk_conv", "HRconv", "conv_last"] + [f"RRDB_trunk_{i}" for i in range(12)]
    )
    assert shapes["RRDB_trunk_0"]["RDB2"]["conv5"]["kernel"].shape == (3, 3, 64 + 4 * 32, 64)
    assert tree_size(shapes) == rrdb_param_count(3, 64, 32, 12, 128) == 8_782_592


def test_rrdb_has_no_normalisation():
    net = RRDBNet(out_channels=4, num_blocks=1, features=8, growth=4)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 6, 3)), jnp.float32)
    abstract = jax.eval_shape(net.init, jax.random.key(0), x)
    assert set(abstract) == {"params"}
    variables = {"params": numpy_params(abstract["params"])}
    leaves = jax.tree_util.tree_leaves_with_path(variables["params"])
    assert all(path[-1].key in ("kernel", "bias") for path, _ in leaves)
    # Scaling the input by s > 0 with zero biases scales the output by s (piecewise linear).
    zero_bias = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if p[-1].key == "bias" else v, variables
    )
    apply = jax.jit(net.apply)
    np.testing.assert_allclose(
        np.asarray(apply(zero_bias, 3 * x)), 3 * np.asarray(apply(zero_bias, x)), atol=1e-4
    )


def test_paper_parameter_count_equals_authors():
    c = base_config()
    apply_preset(c.model, "segdiff", "paper")
    model = build_model(c.model, image_channels=3)
    assert count_params(model, (1, 256, 256, 1), (1, 256, 256, 3)) == 164_154_753


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_overfits_one_batch(mode):
    model = build_model(tiny_config(mode), image_channels=3)
    first, last = overfit(model, *inputs(mode))
    assert last < first / 10, (first, last)
