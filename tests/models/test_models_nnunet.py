"""Tests of the nnU-Net-style UNet and the feed-forward baseline."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdiffseg.models import nnunet
from jdiffseg.models.nnunet import GenericUNet, NNUNet, stage_channels, upsample_bilinear

TINY = nnunet.generic_unet_kwargs(nnunet.PRESETS["tiny"])


def _key(seed: int) -> jax.Array:
    """A PRNG key; 'rbg' compiles far faster than threefry on CPU, which keeps init cheap."""
    return jax.random.key(seed, impl="rbg")


def _inputs(batch: int = 2, size: int = 16, seed: int = 0):
    k1, k2 = jax.random.split(_key(seed))
    image = jax.random.uniform(k1, (batch, size, size, 3), minval=-1.0, maxval=1.0)
    mask = (jax.random.uniform(k2, (batch, size, size, 1)) > 0.5).astype(jnp.float32)
    return image, mask, jnp.zeros((batch,), jnp.int32)


def _numpy_bilinear_up(x: np.ndarray, factor: int) -> np.ndarray:
    """Independent bilinear upsampling with half-pixel centres and edge clamping."""
    h, w = x.shape[1:3]

    def coords(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(n_in * factor) + 0.5) / factor - 0.5, 0, None)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = coords(h)
    x0, x1, fx = coords(w)
    rows = x[:, y0] * (1 - fy)[None, :, None, None] + x[:, y1] * fy[None, :, None, None]
    return rows[:, :, x0] * (1 - fx)[None, None, :, None] + rows[:, :, x1] * fx[None, None, :, None]


def test_stage_channels_match_authors_encoder():
    assert stage_channels(32, 5, 480) == (32, 64, 128, 256, 480, 480)
    assert stage_channels(8, 3, 32) == (8, 16, 32, 32)


@pytest.mark.parametrize("factor", [2, 4])
def test_bilinear_upsampling_matches_numpy(factor):
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 3)).astype(np.float32)
    got = np.asarray(upsample_bilinear(jnp.asarray(x), factor))
    np.testing.assert_allclose(got, _numpy_bilinear_up(x, factor), atol=1e-5)


def test_paper_preset_parameter_count_equals_authors_encoder():
    model = NNUNet(**nnunet.generic_unet_kwargs(nnunet.PRESETS["paper"]))
    image, mask, t = (jnp.zeros((1, 256, 256, c)) for c in (3, 1, 0))
    shapes = jax.eval_shape(lambda: model.init(_key(0), mask, jnp.zeros((1,), jnp.int32), image))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == 15_727_232
    del t


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_output_shapes_dtypes_and_batch_stats(norm):
    image, mask, t = _inputs()
    model = NNUNet(**{**TINY, "norm": norm}, mask_channels=1)
    variables = model.init(_key(0), mask, t, image)
    assert ("batch_stats" in variables) == (norm == "batch")
    out = model.apply(variables, mask, t, image)
    assert set(out) == {"out"}
    assert out["out"].shape == (2, 16, 16, 1) and out["out"].dtype == jnp.float32
    out_train, updates = model.apply(
        variables,
        mask,
        t,
        image,
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": _key(1)},
    )
    assert out_train["out"].shape == (2, 16, 16, 1)
    if norm == "batch":
        before = jax.tree.leaves(variables["batch_stats"])
        after = jax.tree.leaves(updates["batch_stats"])
        assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_bfloat16_compute_keeps_float32_params_and_output():
    image, mask, t = _inputs()
    model = NNUNet(**TINY, dtype=jnp.bfloat16)
    variables = model.init(_key(0), mask, t, image)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    out = model.apply(variables, mask, t, image)["out"]
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


def test_remat_gives_the_same_output():
    image, mask, t = _inputs()
    variables = NNUNet(**TINY).init(_key(0), mask, t, image)
    plain = NNUNet(**TINY).apply(variables, mask, t, image)["out"]
    remat = NNUNet(**TINY, remat=True).apply(variables, mask, t, image)["out"]
    np.testing.assert_allclose(plain, remat, atol=1e-6)


def test_deterministic_in_eval_and_stochastic_dropout_in_train():
    image, mask, t = _inputs()
    model = NNUNet(**TINY)
    variables = model.init(_key(0), mask, t, image)
    a = model.apply(variables, mask, t, image)["out"]
    b = model.apply(variables, mask, t, image)["out"]
    np.testing.assert_array_equal(a, b)

    def train_out(seed: int) -> jax.Array:
        out, _ = model.apply(
            variables,
            mask,
            t,
            image,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": _key(seed)},
        )
        return out["out"]

    np.testing.assert_array_equal(train_out(3), train_out(3))
    assert not np.allclose(train_out(3), train_out(4))


def test_ignores_mask_input_and_timestep():
    image, mask, t = _inputs()
    model = NNUNet(**TINY)
    variables = model.init(_key(0), mask, t, image)
    a = model.apply(variables, mask, t, image)["out"]
    b = model.apply(variables, jnp.zeros_like(mask), t + 7, image)["out"]
    np.testing.assert_array_equal(a, b)


def test_unit_gates_change_nothing_and_zero_gate_blocks_the_deep_path():
    image, _, _ = _inputs()
    net = GenericUNet(**TINY, out_channels=1)
    variables = net.init(_key(0), image)
    plain = net.apply(variables, image)
    ones = net.apply(variables, image, gates=(jnp.ones((1, 1, 1, 8)),))
    np.testing.assert_allclose(plain["logits"], ones["logits"], atol=1e-6)
    zero = net.apply(variables, image, gates=(jnp.zeros((1, 1, 1, 8)),))
    # With the first pooled stage zeroed, the bottleneck no longer depends on the image.
    other = net.apply(variables, -image, gates=(jnp.zeros((1, 1, 1, 8)),))
    np.testing.assert_allclose(zero["bottleneck"], other["bottleneck"], atol=1e-6)
    assert [d.shape[1] for d in plain["decoder"]] == [4, 8, 16]


@pytest.mark.parametrize("mode", ["diffusion", "mask_only", "image_generation"])
def test_other_modes_are_rejected(mode):
    image, mask, t = _inputs()
    with pytest.raises(ValueError, match="only supports mode='feedforward'"):
        NNUNet(**TINY, mode=mode).init(_key(0), mask, t, image)


def test_bad_inputs_raise_clear_errors():
    image, mask, t = _inputs(size=10)
    with pytest.raises(ValueError, match="divisible by 8"):
        NNUNet(**TINY).init(_key(0), mask, t, image)
    image, mask, t = _inputs()
    with pytest.raises(ValueError, match="needs `image`"):
        NNUNet(**TINY).init(_key(0), mask, t, None)


def test_overfits_a_single_batch():
    image, mask, t = _inputs(batch=2, size=16, seed=3)
    model = NNUNet(**{**TINY, "encoder_dropout": 0.0, "base_channels": 8, "max_channels": 16})
    variables = model.init(_key(0), mask, t, image)
    optimizer = optax.adam(1e-2)
    state = (variables["params"], variables["batch_stats"], optimizer.init(variables["params"]))

    @jax.jit
    def step(state):
        params, stats, opt_state = state

        def loss_fn(p):
            out, upd = model.apply(
                {"params": p, "batch_stats": stats},
                mask,
                t,
                image,
                train=True,
                mutable=["batch_stats"],
            )
            return optax.sigmoid_binary_cross_entropy(out["out"], mask).mean(), upd

        (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), upd["batch_stats"], opt_state), loss

    first = None
    for _ in range(150):
        state, loss = step(state)
        first = loss if first is None else first
    assert float(loss) < 0.1 * float(first)
