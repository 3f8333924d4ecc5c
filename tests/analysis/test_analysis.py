"""The timestep analysis: structure, the vmapped vs looped computation, and Bayes-optimal oracles.

The oracle denoiser is exact by construction: the analysed masks are a known finite bank, the
image encodes its mask (image = 2·mask − 1), so with the image the posterior mean of x0 is the
mask itself, and with a blank image it is the posterior mean over the bank given x_t
(softmax of Gaussian log-likelihoods). That is the model a perfectly trained network would be,
so "perfect recovery at t = 0" and "the mask prior at t = T − 1" are exact properties of it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.analysis import curves as ac
from jdiffseg.analysis import results as analysis_results
from jdiffseg.cli import analyze as cli_analyze
from jdiffseg.diffusion import gaussian, objectives
from jdiffseg.diffusion.schedules import make_schedule

ROOT = Path(__file__).resolve().parents[2]
T = 40
N = 7  # odd: the mean of the mask bank is never exactly 0.5
SIZE = 8


def _objective(prediction: str = "eps", mode: str = "diffusion") -> objectives.Objective:
    return objectives.Objective(
        mode=mode, prediction=prediction, variance="fixed_small", encoding="zero_one",
        reduction="mean", use_vb=False, rescale_timesteps=False, num_timesteps=T,
        feedforward_t=0, cal_loss_weight=0.0,
    )


def _masks(n: int = N, seed: int = 0) -> np.ndarray:
    """n distinct random rectangles on SIZE x SIZE, shape (n, SIZE, SIZE, 1) in {0, 1}."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, SIZE, SIZE, 1), np.float32)
    for m in out:
        y, x = rng.integers(0, SIZE // 2, 2)
        h, w = rng.integers(2, SIZE // 2 + 1, 2)
        m[y : y + h, x : x + w] = 1.0
    return out


def _oracle(schedule, bank: np.ndarray, prediction: str) -> ac.Denoiser:
    """Bayes-optimal x0 for masks drawn uniformly from `bank`, output as `prediction`."""
    bank = jnp.asarray(bank)

    def apply(_, x_t, t, image):
        ab = gaussian.extract(schedule.alphas_cumprod, t, x_t)
        sq = jnp.sum(
            jnp.square(x_t[:, None] - jnp.sqrt(ab)[:, None] * bank[None]), axis=(2, 3, 4)
        )
        p = jax.nn.softmax(-sq / (2.0 * (1.0 - ab[:, 0, 0])), axis=1)
        posterior = jnp.einsum("bk,khwc->bhwc", p, bank)
        if image is None:
            x0 = posterior
        else:
            known = jnp.any(image != 0, axis=(1, 2, 3), keepdims=True)
            x0 = jnp.where(known, (image[..., :1] > 0).astype(jnp.float32), posterior)
        if prediction == "x0":
            out = x0
        elif prediction == "eps":
            out = gaussian.eps_from_x0(schedule, x_t, t, x0)
        else:
            eps = gaussian.eps_from_x0(schedule, x_t, t, x0)
            out = gaussian.v_from_x0_eps(schedule, x0, eps, t)
        return {"out": out}

    return ac.Denoiser(apply, _objective(prediction), clip_x0=True)


class _TinyEps(nn.Module):
    """A small random conv net with a timestep embedding (non-zero, bounded ε outputs)."""

    @nn.compact
    def __call__(self, x_t, t, image=None):
        h = x_t if image is None else jnp.concatenate([image, x_t], axis=-1)
        emb = nn.Dense(8)(jnp.sin(t[:, None].astype(jnp.float32) / jnp.arange(1.0, 9.0)))
        h = nn.Conv(8, (3, 3))(h) + emb[:, None, None, :]
        return {"out": jnp.tanh(nn.Conv(1, (3, 3))(nn.silu(h)))}


@pytest.fixture(scope="module")
def schedule():
    return make_schedule("linear", T)


@pytest.fixture(scope="module")
def bank():
    return _masks()


@pytest.fixture(scope="module")
def images(bank):
    return np.repeat(2.0 * bank - 1.0, 3, axis=-1)


@pytest.fixture(scope="module")
def tiny():
    module = _TinyEps()
    variables = jax.jit(module.init)(
        jax.random.key(1), jnp.zeros((1, SIZE, SIZE, 1)), jnp.zeros((1,), jnp.int32),
        jnp.zeros((1, SIZE, SIZE, 3)),
    )
    return ac.Denoiser(lambda v, x, t, i: module.apply(v, x, t, i), _objective()), variables


def test_timesteps_cover_the_chain_and_its_end():
    np.testing.assert_array_equal(ac.analysis_timesteps(5), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(ac.analysis_timesteps(10, 4), [0, 4, 8, 9])
    with pytest.raises(ValueError, match="t_stride"):
        ac.analysis_timesteps(10, 0)


def test_fixed_noise_depends_only_on_seed_and_image_index():
    a = ac.fixed_noise(3, 4, (2, 2, 1))
    b = ac.fixed_noise(3, 6, (2, 2, 1))
    np.testing.assert_array_equal(a, b[:4])
    assert not np.allclose(a, ac.fixed_noise(4, 4, (2, 2, 1)))


def test_vmapped_chunks_equal_the_loop(tiny, schedule, images, bank):
    seg, variables = tiny
    mask_only = _oracle(schedule, bank, "v")
    data = ac.segmentation_data(images, bank, seed=0)
    step = ac.segmentation_step(seg, schedule, mask_only)
    ts = jnp.asarray(ac.analysis_timesteps(T, 3))
    params = (variables, None)
    vmapped = ac.vmapped_curves(step, chunk_size=4)(params, data, ts)  # 14 = 3·4 + 2
    looped = ac.looped_curves(step)(params, data, ts)
    names = {f"{m}_{v}" for m in ("mse", "dice", "iou", "chance_dice", "loss", "target_mse")
             for v in ("image", "blank", "mask_only")}
    assert set(vmapped) == names
    for name in names:
        assert vmapped[name].shape == (len(ts), N), name
        np.testing.assert_allclose(vmapped[name], looped[name], atol=2e-5, err_msg=name)


def test_t0_recovery_is_perfect_for_a_bounded_eps_model(tiny, schedule, images, bank):
    # x0 = x_t/√ᾱ_0 − √(1/ᾱ_0 − 1)·ε̂ errs by √(β_0/(1 − β_0))·|ε − ε̂| ≈ 0.05·|ε − ε̂|: below
    # the 0.5 threshold for any |ε̂| ≤ 1 (tanh output) unless |ε| > 9.
    seg, variables = tiny
    curves = ac.compute_segmentation_curves(
        seg, variables, schedule, images, bank, ac.analysis_timesteps(T), chunk_size=8
    )
    out = seg(variables, jnp.asarray(bank), jnp.zeros((N,), jnp.int32), jnp.asarray(images))
    assert 0.05 < float(jnp.max(jnp.abs(out["out"]))) <= 1.0  # a non-trivial, bounded model
    for v in ("image", "blank"):
        np.testing.assert_array_equal(curves[f"dice_{v}"][0], 1.0)
        np.testing.assert_array_equal(curves[f"iou_{v}"][0], 1.0)
        assert np.max(curves[f"mse_{v}"][0]) < 0.01


def test_oracle_recovers_with_the_image_and_falls_to_the_prior_without(schedule, images, bank):
    oracle = _oracle(schedule, bank, "eps")
    curves = ac.compute_segmentation_curves(
        oracle, None, schedule, images, bank, ac.analysis_timesteps(T),
        mask_only=_oracle(schedule, bank, "x0"), chunk_size=16,
    )
    assert all(c.shape == (T, N) for c in curves.values())
    np.testing.assert_allclose(curves["dice_image"], 1.0, atol=1e-6)
    np.testing.assert_allclose(curves["dice_blank"][0], 1.0)
    prior = ac.prior_scores(bank)["prior_dice"]
    # At t = T − 1, x_t holds ~no mask signal: the posterior is the prior (the mean mask).
    assert abs(curves["dice_blank"][-1].mean() - prior) < 0.02
    assert abs(curves["dice_mask_only"][-1].mean() - prior) < 0.02
    # The same prior prediction for every image: own mask vs a shifted one score alike.
    assert abs(curves["dice_blank"][-1].mean() - curves["chance_dice_blank"][-1].mean()) < 0.02
    # Without the image recovery only degrades with t; the image's contribution is >= 0.
    blank = curves["mse_blank"].mean(axis=1)
    assert np.all(np.diff(blank) > -1e-3)
    assert np.all(curves["mse_image"] <= curves["mse_blank"] + 1e-6)
    # The mask-only objective is the x0 error; for an x0 model with outputs in [0, 1] it is
    # the recovery MSE itself.
    np.testing.assert_allclose(curves["loss_mask_only"], curves["mse_mask_only"], atol=1e-6)


def test_eps_x0_and_v_outputs_give_the_same_recovery(schedule, images, bank):
    ts = ac.analysis_timesteps(T, 3)
    runs = {
        p: ac.compute_segmentation_curves(
            _oracle(schedule, bank, p), None, schedule, images, bank, ts, chunk_size=8
        )
        for p in ("x0", "eps", "v")
    }
    # ε → x0 multiplies float error by √(1/ᾱ_t − 1), ~10³ at the end of the chain.
    for p in ("eps", "v"):
        np.testing.assert_allclose(runs[p]["mse_blank"], runs["x0"]["mse_blank"], atol=2e-3)
        np.testing.assert_allclose(runs[p]["mse_image"], runs["x0"]["mse_image"], atol=1e-6)


def test_loss_at_t_is_the_objective_in_closed_form(schedule, images, bank):
    zero = ac.Denoiser(lambda v, x, t, i: {"out": jnp.zeros_like(x)}, _objective("eps"))
    ts = ac.analysis_timesteps(T, 5)
    seg = ac.compute_segmentation_curves(zero, None, schedule, images, bank, ts, seed=2)
    noise = ac.fixed_noise(2, N, (SIZE, SIZE, 1))
    expected = np.mean(np.square(noise), axis=(1, 2, 3))  # ε target, zero output: mean ε²
    np.testing.assert_allclose(seg["loss_image"], np.broadcast_to(expected, (len(ts), N)),
                               rtol=1e-5)
    np.testing.assert_allclose(seg["target_mse_image"], seg["loss_image"], rtol=1e-6)
    gen_obj = _objective("x0", mode="image_generation")
    gen = ac.Denoiser(lambda v, x, t, i: {"out": jnp.zeros_like(x)}, gen_obj)
    curves = ac.compute_generation_curves(gen, None, schedule, images, ts, chunk_size=4)
    # x0 target, zero output: the loss is the images' mean square at every t.
    np.testing.assert_allclose(
        curves["loss"], np.broadcast_to(np.mean(images**2, axis=(1, 2, 3)), (len(ts), N)),
        rtol=1e-5,
    )
    np.testing.assert_allclose(curves["target_mse"], curves["loss"], rtol=1e-6)


def test_target_mse_leaves_out_the_vb_term(schedule, images, bank):
    """A learned-range ε model: 'target_mse' is the ε-MSE alone, 'loss' adds the VB term."""
    obj = dataclasses.replace(_objective("eps"), variance="learned_range", use_vb=True)
    zero = ac.Denoiser(
        lambda v, x, t, i: {"out": jnp.zeros((*x.shape[:-1], 2), x.dtype)}, obj
    )
    ts = np.array([0, T // 2, T - 1])
    seg = ac.compute_segmentation_curves(zero, None, schedule, images, bank, ts, seed=2)
    noise = ac.fixed_noise(2, N, (SIZE, SIZE, 1))
    expected = np.mean(np.square(noise), axis=(1, 2, 3))  # zero ε prediction: mean ε²
    np.testing.assert_allclose(seg["target_mse_image"], np.broadcast_to(expected, (3, N)),
                               rtol=1e-5)
    # The VB term (a KL divergence, or the decoder NLL at t = 0) is positive at every t.
    assert np.all(seg["loss_image"] - seg["target_mse_image"] > 1e-3)


_SHARDED = """
import numpy as np, jax
from jdiffseg.analysis import curves as ac
from jdiffseg.runtime import sharding
from jdiffseg.diffusion.schedules import make_schedule
import test_analysis as ta
assert jax.device_count() == 2
s = make_schedule("linear", ta.T)
bank = ta._masks(5)
images = np.repeat(2.0 * bank - 1.0, 3, axis=-1)
ts = ac.analysis_timesteps(ta.T, 4)
oracle = ta._oracle(s, bank, "eps")
two = ac.compute_segmentation_curves(oracle, None, s, images, bank, ts, chunk_size=4)
one = ac.compute_segmentation_curves(oracle, None, s, images, bank, ts, chunk_size=4,
    mesh=sharding.make_mesh(jax.devices()[:1]))
for k in one:
    assert two[k].shape == (len(ts), 5), (k, two[k].shape)
    np.testing.assert_allclose(two[k], one[k], atol=1e-4, err_msg=k)
print("ok")
"""


def test_images_shard_over_two_devices_with_padding():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT / "tests" / "analysis"))
    result = subprocess.run([sys.executable, "-c", _SHARDED], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_bad_inputs_are_named(schedule, images, bank):
    with pytest.raises(ValueError, match="chunk_size"):
        ac.vmapped_curves(lambda p, d, t: {}, 0)
    with pytest.raises(ValueError, match="masks"):
        ac.segmentation_data(images, bank[..., 0], seed=0)
    with pytest.raises(FileNotFoundError, match="jdiffseg analyze --workdir"):
        analysis_results.load_results("/nonexistent/run")


def _fake_run(workdir: Path, mode: str, data_dir: Path) -> None:
    """A workdir as training leaves it (config.json + one checkpoint), with random weights."""
    from jdiffseg.config import parsing, schema
    from jdiffseg.models import build_model
    from jdiffseg.runtime import checkpoint

    c = schema.base_config()
    parsing.update(c, {
        "model.mode": mode, "data.image_size": 16, "data.num_train_examples": 8,
        "data.num_val_examples": 5, "data.num_test_examples": 2, "data.eval_batch_size": 4,
        "data.data_dir": str(data_dir), "model.channel_mult": (1,),
        "model.attention_resolutions": (), "diffusion.num_timesteps": 12,
        "diffusion.schedule": "cosine",
        "diffusion.prediction": "x0" if mode == "mask_only" else "eps",
    })
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(parsing.to_json(c))
    model = build_model(c.model, image_channels=3, mask_channels=1)
    image = jnp.zeros((1, 16, 16, 3)) if mode == "diffusion" else None
    x = jnp.zeros((1, 16, 16, 3 if mode == "image_generation" else 1))
    params = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros((1,), jnp.int32), image)
    ckpt = checkpoint.Checkpointer(str(workdir), keep=1, best_metric=None, async_save=False)
    ckpt.save(3, {"params": params["params"], "ema_params": params["params"]})
    ckpt.close()


@pytest.mark.slow
def test_analyze_command_end_to_end(tmp_path, capsys):
    import json

    data_dir = tmp_path / "tfds"
    runs = {m: tmp_path / m for m in ("diffusion", "mask_only", "image_generation")}
    for mode, workdir in runs.items():
        _fake_run(workdir, mode, data_dir)
    e2 = str(runs["diffusion"])
    rc = cli_analyze.main([
        f"--workdir={e2}", f"--mask_only_workdir={runs['mask_only']}",
        f"--image_generation_workdir={runs['image_generation']}", "--emit_adapted_config",
        "--config.analysis.t_stride=5", "--config.analysis.chunk_size=2",
        "--config.analysis.checkpoint=latest",
    ])
    assert rc == 0
    out = runs["diffusion"] / "analysis"
    result = json.loads((out / "timesteps.json").read_text())
    assert result["timesteps"] == [0, 5, 10, 11] and result["num_images"] == 5
    assert len(result["curves"]["dice_mask_only"]) == 4
    assert len(result["image_generation"]["loss"]) == 4
    # Zero-initialised output (ε̂ = 0): x0 errs by √(β_0/(1−β_0))·|ε| ≈ 0.14·|ε| at t = 0 of
    # this 12-step cosine chain, past the 0.5 threshold only where |ε| > 3.5.
    assert result["curves"]["dice_image"][0] > 0.98
    for name in ("timesteps.csv", "loss.png", "recovery.png", "contribution.png",
                 "adapted_config.json"):
        assert (out / name).is_file(), name
    fig = tmp_path / "cmp.png"
    assert cli_analyze.main(["--compare", e2, e2, "--labels=a,b", f"--out={fig}"]) == 0
    assert fig.is_file() and set(json.loads(fig.with_suffix(".json").read_text())) == {"a", "b"}
    assert cli_analyze.main([f"--workdir={e2}", "--config.analysis.no_such_key=1"]) == 2
    capsys.readouterr()
    assert cli_analyze.main([f"--workdir={e2}", f"--mask_only_workdir={e2}"]) == 2
    assert "'mask_only' run" in capsys.readouterr().err
