"""EnsemDiff: modes, shapes, dtypes, determinism, parameter counts, overfitting one batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jdiffseg.config.schema import base_config
from jdiffseg.models import MODES, apply_preset, build_model, count_params, get_preset
from jdiffseg.models.blocks import Conv2d
from jdiffseg.models.presets import UNET_FIELDS, resolve

TINY = dict(
    base_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(2,),
    num_heads=2,
    learn_sigma=True,
)


def tiny_config(mode: str, **over) -> ml_collections.ConfigDict:
    c = base_config()
    apply_preset(c.model, "ensemdiff", "tiny")
    c.model.mode = mode
    for k, v in {**TINY, **over}.items():
        c.model[k] = v
    return c.model


def inputs(mode: str, b: int = 2, size: int = 8, image_channels: int = 3):
    rng = np.random.default_rng(0)
    x_ch = image_channels if mode == "image_generation" else 1
    x_t = jnp.asarray(rng.normal(size=(b, size, size, x_ch)), jnp.float32)
    if mode == "feedforward":
        x_t = jnp.zeros_like(x_t)
    image = None
    if mode in ("diffusion", "feedforward"):
        image = jnp.asarray(rng.uniform(-1, 1, (b, size, size, image_channels)), jnp.float32)
    t = jnp.array([5, 77][:b], jnp.int32)
    return x_t, t, image


EXPECTED = {  # mode -> (x_t channels, first conv input channels, output channels)
    "diffusion": (1, 4, 2),
    "feedforward": (1, 4, 1),
    "mask_only": (1, 1, 2),
    "image_generation": (3, 3, 6),
}


@pytest.mark.parametrize("mode", MODES)
def test_shapes_dtypes_and_channels(mode):
    model = build_model(tiny_config(mode), image_channels=3)
    x_t, t, image = inputs(mode)
    variables = jax.eval_shape(model.init, jax.random.key(0), x_t, t, image)
    _, in_ch, out_ch = EXPECTED[mode]
    assert variables["params"]["unet"]["input_blocks_0_0"]["kernel"].shape == (3, 3, in_ch, 32)
    out = jax.eval_shape(model.apply, variables, x_t, t, image)
    assert set(out) == {"out"}
    assert out["out"].shape == (2, 8, 8, out_ch) and out["out"].dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


def test_mode_inputs_are_checked():
    model = build_model(tiny_config("diffusion"), image_channels=3)
    x_t, t, image = inputs("diffusion")
    with pytest.raises(ValueError, match="needs image"):
        model.init(jax.random.key(0), x_t, t, None)
    with pytest.raises(ValueError, match="image must be"):
        model.init(jax.random.key(0), x_t, t, image[..., :2])
    mask_only = build_model(tiny_config("mask_only"), image_channels=3)
    with pytest.raises(ValueError, match="no image branch"):
        mask_only.init(jax.random.key(0), x_t, t, image)
    with pytest.raises(ValueError, match="unknown model mode"):
        build_model(tiny_config("segmentation"), image_channels=3)


def numpy_params(abstract, seed: int = 0):
    """Random parameters of the shapes in ``abstract`` (cheaper than compiling ``init``)."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if len(leaf.shape) >= 2:
            return rng.normal(size=leaf.shape).astype(np.float32) / np.sqrt(
                np.prod(leaf.shape[:-1])
            )
        return (1.0 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree.map(fill, abstract)


def test_determinism():
    model = build_model(tiny_config("diffusion"), image_channels=3)
    x_t, t, image = inputs("diffusion")
    abstract = jax.eval_shape(model.init, jax.random.key(3), x_t, t, image)
    params = numpy_params(abstract["params"])
    fwd = jax.jit(lambda p: model.apply({"params": p}, x_t, t, image)["out"])
    out = fwd(params)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(fwd(params)))
    assert float(jnp.std(out)) > 0
    # init: same key, same parameters; another key, others (on the first conv, for speed)
    conv = Conv2d(8)
    a, b, c = (conv.init(jax.random.key(k), image)["params"]["kernel"] for k in (3, 3, 4))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = build_model(tiny_config("diffusion", dtype="bfloat16", remat=True), image_channels=3)
    x_t, t, image = inputs("diffusion")
    variables = jax.eval_shape(model.init, jax.random.key(0), x_t, t, image)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    assert jax.eval_shape(model.apply, variables, x_t, t, image)["out"].dtype == jnp.float32


@pytest.mark.parametrize(("channels", "expected"), [(3, 113_673_218), (4, 113_674_370)])
def test_paper_parameter_count_equals_authors(channels, expected):
    c = base_config()
    apply_preset(c.model, "ensemdiff", "paper")
    model = build_model(c.model, image_channels=channels)
    assert count_params(model, (1, 256, 256, 1), (1, 256, 256, channels)) == expected


def test_preset_fills_fields_the_config_lacks():
    c = ml_collections.ConfigDict(dict(preset="paper", base_channels=64))
    fields = resolve(c, "ensemdiff", UNET_FIELDS)
    assert fields["base_channels"] == 64  # the config wins
    assert fields["channel_mult"] == get_preset("ensemdiff", "paper")["channel_mult"]
    with pytest.raises(KeyError, match="lacks"):
        resolve(ml_collections.ConfigDict(dict(preset="custom")), "ensemdiff", UNET_FIELDS)
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("ensemdiff", "huge")


def test_unknown_arch():
    c = tiny_config("diffusion")
    c.arch = "transunet"
    with pytest.raises(ValueError, match="unknown config"):
        build_model(c, image_channels=3)


def overfit(model, x_t, t, image, steps: int = 60, lr: float = 3e-3) -> tuple[float, float]:
    """Adam on one batch towards a fixed target; returns (first, last) loss."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), x_t, t, image)
    params = numpy_params(abstract["params"])
    shape = jax.eval_shape(model.apply, abstract, x_t, t, image)["out"].shape
    target = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    opt = optax.adam(lr)

    @jax.jit
    def step(params, state):
        def loss_fn(p):
            out = model.apply(
                {"params": p}, x_t, t, image, train=True, rngs={"dropout": jax.random.key(1)}
            )
            return jnp.mean((out["out"] - target) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state = opt.init(params)
    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return losses[0], losses[-1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_overfits_one_batch(mode):
    model = build_model(tiny_config(mode), image_channels=3)
    first, last = overfit(model, *inputs(mode))
    assert last < first / 10, (first, last)
