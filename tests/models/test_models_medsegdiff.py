"""Tests of MedSegDiff (both variants) and its FF-Parser."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from jdiffseg.models import medsegdiff
from jdiffseg.models.ff_parser import FFParser, ff_parse
from jdiffseg.models.params import count_params, tree_size

SIZE = 16
IMAGE_CHANNELS = 3


def _key(seed: int) -> jax.Array:
    """A PRNG key; 'rbg' compiles far faster than threefry on CPU, which keeps init cheap."""
    return jax.random.key(seed, impl="rbg")


def _config(preset: str, mode: str = "diffusion", **overrides) -> ml_collections.ConfigDict:
    fields = dict(medsegdiff.PRESETS[preset], mode=mode, dtype="float32", remat=False)
    fields.update(overrides)
    return ml_collections.ConfigDict(dict(fields, arch="medsegdiff", preset=preset))


def _inputs(mode: str, batch: int = 2, seed: int = 0):
    k1, k2, k3 = jax.random.split(_key(seed), 3)
    image = jax.random.uniform(k1, (batch, SIZE, SIZE, IMAGE_CHANNELS), minval=-1.0, maxval=1.0)
    x_channels = IMAGE_CHANNELS if mode == "image_generation" else 1
    x_t = jax.random.normal(k2, (batch, SIZE, SIZE, x_channels))
    t = jax.random.randint(k3, (batch,), 0, 1000)
    return x_t, t, (image if mode in ("diffusion", "feedforward") else None)


def random_variables(model, *args, seed: int = 0):
    """Variables of ``model.init(key, *args)``'s structure filled from NumPy: kernels and
    Fourier weights N(0, 1/fan_in), norm scales and running variances 1, biases and means 0.

    Compiling the real initialisers costs tens of seconds per configuration on a small CPU;
    `test_real_initialisation` covers them once.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "mean"):
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(model.init, _key(0), *args))


@functools.cache
def _model_and_variables(preset: str, mode: str = "diffusion", **overrides):
    model = medsegdiff.build(_config(preset, mode, **overrides), image_channels=IMAGE_CHANNELS)
    return model, random_variables(model, *_inputs(mode))


# ------------------------------------------------------------------------------- FF-Parser


def test_ff_parse_matches_numpy_fft():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 6, 3)).astype(np.float32)
    w = (rng.normal(size=(8, 4, 3)) + 1j * rng.normal(size=(8, 4, 3))).astype(np.complex64)
    spectrum = np.fft.rfft2(x.astype(np.float64), axes=(1, 2), norm="ortho")
    want = np.fft.irfft2(spectrum * w, s=(8, 6), axes=(1, 2), norm="ortho")
    got = ff_parse(jnp.asarray(x), jnp.asarray(w))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_ff_parser_module_layout_identity_and_size_check():
    x = jax.random.normal(_key(0), (1, 8, 8, 5))
    module = FFParser()
    variables = module.init(_key(1), x)
    weight = variables["params"]["complex_weight"]
    assert weight.shape == (8, 5, 5, 2)
    assert 0.01 < float(jnp.std(weight)) < 0.03  # N(0, 0.02^2) as the authors
    unit = jnp.zeros_like(weight).at[..., 0].set(1.0)
    np.testing.assert_allclose(module.apply({"params": {"complex_weight": unit}}, x), x, atol=1e-5)
    with pytest.raises(ValueError, match="complex_weight of shape"):
        module.apply(variables, jnp.zeros((1, 16, 16, 5)))


# ------------------------------------------------------------------------------ parameters


@pytest.mark.slow
def test_real_initialisation():
    model = medsegdiff.build(_config("tiny_v1"), image_channels=IMAGE_CHANNELS)
    x_t, t, image = _inputs("diffusion")
    variables = jax.jit(model.init)(_key(0), x_t, t, image)
    shapes = jax.tree.map(jnp.shape, random_variables(model, x_t, t, image))
    assert jax.tree.map(jnp.shape, variables) == shapes
    out = model.apply(variables, x_t, t, image)
    np.testing.assert_array_equal(out["out"], 0.0)  # zero-initialised output conv
    assert bool(jnp.all((out["cal"] > 0) & (out["cal"] < 1)))
    stats = flatten_dict(variables["batch_stats"])
    assert all(float(jnp.max(jnp.abs(v - (k[-1] == "var")))) == 0.0 for k, v in stats.items())
    kernel = variables["params"]["encoder"]["enc1_conv0"]["conv"]["kernel"]  # He normal
    assert 0.8 < float(jnp.std(kernel)) * np.sqrt(9 * 4 / 2) < 1.2
    fourier = variables["params"]["gate_0"]["ffparser"]["complex_weight"]
    assert 0.01 < float(jnp.std(fourier)) < 0.03


def test_paper_presets_have_the_authors_parameter_counts():
    shapes = {"x_shape": (1, 256, 256, 1), "image_shape": (1, 256, 256, 3)}
    new = medsegdiff.build(_config("paper"), image_channels=3)
    assert count_params(new, **shapes) == 129_400_450
    v1 = medsegdiff.build(_config("paper_v1"), image_channels=3)
    variables = jax.eval_shape(
        lambda: v1.init(
            _key(0),
            jnp.zeros(shapes["x_shape"]),
            jnp.zeros((1,), jnp.int32),
            jnp.zeros(shapes["image_shape"]),
        )
    )
    proj = tree_size(variables["params"]["bottleneck_proj"])
    assert proj == 480 * 512 + 512 == 246_272
    assert tree_size(variables["params"]) - proj == 130_527_814


# ------------------------------------------------------------------------- shapes and modes


@pytest.mark.parametrize("preset", ["tiny", "tiny_v1"])
@pytest.mark.parametrize("mode", ["diffusion", "feedforward", "mask_only", "image_generation"])
def test_output_shapes_and_dtypes(preset, mode):
    model, variables = _model_and_variables(preset, mode)
    x_t, t, image = _inputs(mode)
    out = model.apply(variables, x_t, t, image)
    out_channels = {"diffusion": 2, "feedforward": 1, "mask_only": 2, "image_generation": 6}
    assert out["out"].shape == (2, SIZE, SIZE, out_channels[mode])
    assert out["out"].dtype == jnp.float32
    if mode in ("diffusion", "feedforward"):
        assert set(out) == {"out", "cal"} and set(variables) == {"params", "batch_stats"}
        assert out["cal"].shape == (2, SIZE, SIZE, 1) and out["cal"].dtype == jnp.float32
        assert bool(jnp.all((out["cal"] > 0) & (out["cal"] < 1)))
    else:
        assert set(out) == {"out"} and set(variables["params"]) == {"unet"}
        assert "batch_stats" not in variables


def test_v1_has_gates_and_projection_new_has_neither():
    _, new = _model_and_variables("tiny")
    _, v1 = _model_and_variables("tiny_v1")
    assert set(new["params"]) == {"unet", "encoder"}
    assert set(v1["params"]) == {"unet", "encoder", "gate_0", "gate_1", "bottleneck_proj"}
    # encoder stages 4 and 8 wide at 8 and 4 px; the projection maps 16 -> 32 channels.
    assert v1["params"]["gate_0"]["ffparser"]["complex_weight"].shape == (8, 5, 4, 2)
    assert v1["params"]["gate_1"]["ffparser"]["complex_weight"].shape == (4, 3, 8, 2)
    assert v1["params"]["bottleneck_proj"]["kernel"].shape == (1, 1, 16, 32)


def test_image_branch_is_required_or_absent():
    model, variables = _model_and_variables("tiny", "mask_only")
    x_t, t, _ = _inputs("mask_only")
    image = jnp.zeros((2, SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="no image branch"):
        model.apply(variables, x_t, t, image)
    model, variables = _model_and_variables("tiny", "diffusion")
    with pytest.raises(ValueError, match="needs image"):
        model.apply(variables, x_t, t, None)


def test_invalid_configurations_raise():
    x_t, t, image = _inputs("diffusion")
    bad_width = medsegdiff.build(_config("tiny", base_channels=32), image_channels=3)
    with pytest.raises(ValueError, match="4 x encoder_base_channels"):
        bad_width.init(_key(0), x_t, t, image)
    bad_depth = medsegdiff.build(_config("tiny_v1", encoder_num_pool=2), image_channels=3)
    with pytest.raises(ValueError, match="must equal len"):
        bad_depth.init(_key(0), x_t, t, image)
    bad_version = medsegdiff.build(_config("tiny", medsegdiff_version="v2"), image_channels=3)
    with pytest.raises(ValueError, match="medsegdiff_version"):
        bad_version.init(_key(0), x_t, t, image)


# -------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("preset", ["tiny", "tiny_v1"])
def test_deterministic_in_eval_and_dropout_in_train(preset):
    model, variables = _model_and_variables(preset)
    x_t, t, image = _inputs("diffusion")
    a = model.apply(variables, x_t, t, image)
    b = model.apply(variables, x_t, t, image)
    for key in ("out", "cal"):
        np.testing.assert_array_equal(a[key], b[key])

    def train(key: jax.Array) -> jax.Array:
        out, _ = model.apply(
            variables, x_t, t, image, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )
        return out["cal"]

    k1, k2 = _key(1), _key(2)
    np.testing.assert_array_equal(train(k1), train(k1))
    assert not np.allclose(train(k1), train(k2))


def _encoder_grad_norms(model, variables, keys: tuple[str, ...]) -> list[float]:
    """Norms of the gradients of sum(output[key] ** 2) w.r.t. the encoder's parameters."""
    x_t, t, image = _inputs("diffusion")

    @jax.jit
    def norms(params):
        def f(p, key):
            return jnp.sum(model.apply({**variables, "params": p}, x_t, t, image)[key] ** 2)

        return [optax.tree.norm(jax.grad(f)(params, key)["encoder"]) for key in keys]

    return [float(n) for n in norms(variables["params"])]


def test_new_variant_detaches_encoder_features_from_the_denoiser():
    model, variables = _model_and_variables("tiny")
    through_out, through_cal = _encoder_grad_norms(model, variables, ("out", "cal"))
    assert through_out == 0.0 and through_cal > 0.0
    # ... while the forward pass does use them.
    x_t, t, image = _inputs("diffusion")
    base = model.apply(variables, x_t, t, image)["out"]
    shifted = model.apply(variables, x_t, t, image * 0.5)["out"]
    assert float(jnp.max(jnp.abs(base - shifted))) > 1e-3


def test_v1_trains_the_encoder_through_the_denoiser():
    model, variables = _model_and_variables("tiny_v1")
    assert _encoder_grad_norms(model, variables, ("out",))[0] > 0.0


@pytest.mark.slow
def test_bfloat16_compute_and_remat():
    model, variables = _model_and_variables("tiny_v1")
    x_t, t, image = _inputs("diffusion")
    ref = model.apply(variables, x_t, t, image)
    remat = medsegdiff.build(_config("tiny_v1", remat=True), image_channels=3)
    got = remat.apply(variables, x_t, t, image)
    np.testing.assert_allclose(got["out"], ref["out"], atol=1e-5)
    bf16 = medsegdiff.build(_config("tiny_v1", dtype="bfloat16"), image_channels=3)
    low = bf16.apply(variables, x_t, t, image)
    assert low["out"].dtype == jnp.float32 and low["cal"].dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(ref["out"])))
    assert float(jnp.max(jnp.abs(low["out"] - ref["out"]))) < 0.1 * scale


# ----------------------------------------------------------------------------- overfitting


def _overfit(preset: str, mode: str, steps: int) -> tuple[float, float]:
    """Adam on one fixed batch; returns (first, last) loss (MSE or BCE + 10 x cal MSE)."""
    model, variables = _model_and_variables(preset, mode, encoder_dropout=0.0)
    x_t, t, image = _inputs(mode, seed=1)
    mask = (jax.random.uniform(_key(5), (2, SIZE, SIZE, 1)) > 0.5).astype(jnp.float32)
    target = jax.random.normal(_key(6), x_t.shape)
    optimizer = optax.adam(3e-3)

    def loss_fn(params, stats):
        out, upd = model.apply(
            {"params": params, **stats}, x_t, t, image, train=True, mutable=list(stats)
        )
        if mode == "feedforward":
            loss = optax.sigmoid_binary_cross_entropy(out["out"], mask).mean()
        else:
            loss = jnp.mean((out["out"][..., : target.shape[-1]] - target) ** 2)
        if "cal" in out:
            loss = loss + 10 * jnp.mean((out["cal"] - mask) ** 2)
        return loss, upd

    @jax.jit
    def step(params, stats, opt_state):
        (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), upd, opt_state, loss

    params = variables["params"]
    stats = {k: v for k, v in variables.items() if k != "params"}
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(steps):
        params, stats, opt_state, loss = step(params, stats, opt_state)
        losses.append(float(loss))
    return losses[0], min(losses[-5:])


def test_overfits_a_single_batch_diffusion():
    first, last = _overfit("tiny", "diffusion", 150)
    assert last < 0.2 * first


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "mode"),
    [
        ("tiny_v1", "diffusion"),
        ("tiny", "feedforward"),
        ("tiny", "mask_only"),
        ("tiny", "image_generation"),
    ],
)
def test_overfits_a_single_batch_other_modes(preset, mode):
    first, last = _overfit(preset, mode, 150)
    assert last < 0.2 * first
