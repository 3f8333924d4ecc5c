"""Tests of the MedSegDiff / nnU-Net weight importers on state dicts in the authors' layout.

The condition encoder's keys (``hwm.*``) are enumerated here from the authors' constructor
rules (``Generic_UNet`` with 2 convs per stage, ``conv_blocks_context`` /
``conv_blocks_localization`` / ``seg_outputs``, v1's ``conv_trans_blocks_a/b`` and
``ffparser``), independently of the importer; the UNet keys come from the UNet importer.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jdiffseg.models import medsegdiff, nnunet
from jdiffseg.models.importers import unet as unet_keys
from jdiffseg.models.importers.medsegdiff import (
    load_medsegdiff_state_dict,
    load_nnunet_state_dict,
)
from jdiffseg.models.importers.torch_state import StateDictError, flatten

SIZE = 16


def _key(seed: int) -> jax.Array:
    """A PRNG key; 'rbg' compiles far faster than threefry on CPU, which keeps init cheap."""
    return jax.random.key(seed, impl="rbg")


def _config(arch: str, preset: str, mode: str) -> ml_collections.ConfigDict:
    presets = medsegdiff.PRESETS if arch == "medsegdiff" else nnunet.PRESETS
    fields = dict(presets[preset], mode=mode, dtype="float32", remat=False)
    return ml_collections.ConfigDict(dict(fields, arch=arch, preset=preset))


@functools.cache
def _variables(preset: str = "tiny", mode: str = "diffusion"):
    """A model and variables of its structure (values random, not its initialisers')."""
    model = medsegdiff.build(_config("medsegdiff", preset, mode), image_channels=3)
    x_t = jnp.zeros((1, SIZE, SIZE, 3 if mode == "image_generation" else 1))
    image = jnp.zeros((1, SIZE, SIZE, 3)) if mode in ("diffusion", "feedforward") else None
    shapes = jax.eval_shape(model.init, _key(0), x_t, jnp.zeros((1,), jnp.int32), image)
    rng = np.random.default_rng(0)
    return model, jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def generic_unet_shapes(
    in_ch: int, base: int, num_pool: int, max_ch: int, classes: int, batch_norm: bool = True
) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the authors' 2-D ``Generic_UNet`` state dict."""
    shapes: dict[str, tuple[int, ...]] = {}

    def block(prefix: str, cin: int, cout: int) -> None:
        shapes[f"{prefix}.conv.weight"] = (cout, cin, 3, 3)
        shapes[f"{prefix}.conv.bias"] = (cout,)
        names = ["weight", "bias"]
        names += ["running_mean", "running_var", "num_batches_tracked"] if batch_norm else []
        for name in names:
            shapes[f"{prefix}.instnorm.{name}"] = () if name == "num_batches_tracked" else (cout,)

    feats, cin, f = [], in_ch, base
    for d in range(num_pool):
        block(f"conv_blocks_context.{d}.blocks.0", cin, f)
        block(f"conv_blocks_context.{d}.blocks.1", f, f)
        feats.append(f)
        cin, f = f, min(2 * f, max_ch)
    block(f"conv_blocks_context.{num_pool}.0.blocks.0", cin, f)
    block(f"conv_blocks_context.{num_pool}.1.blocks.0", f, feats[-1])
    for u in range(num_pool):
        skip = feats[-(u + 1)]
        final = feats[-(u + 2)] if u < num_pool - 1 else skip
        block(f"conv_blocks_localization.{u}.0.blocks.0", 2 * skip, skip)
        block(f"conv_blocks_localization.{u}.1.blocks.0", skip, final)
    shapes["seg_outputs.0.weight"] = (classes, feats[0], 1, 1)
    return shapes


def v1_gate_shapes(
    feats: list[int], unet_chans: list[int], size: int
) -> dict[str, tuple[int, ...]]:
    """The v1 highway keys (``conv_trans_blocks_a/b``, ``ffparser``) of ``Generic_UNet``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for d, (f, u) in enumerate(zip(feats, unet_chans, strict=True)):
        shapes[f"conv_trans_blocks_a.{d}.weight"] = (f, u, 1, 1)
        shapes[f"conv_trans_blocks_a.{d}.bias"] = (f,)
        shapes[f"conv_trans_blocks_b.{d}.weight"] = (1, f, 1, 1)
        shapes[f"conv_trans_blocks_b.{d}.bias"] = (1,)
        shapes[f"ffparser.{d}.complex_weight"] = (
            f,
            size // 2 ** (d + 1),
            size // 2 ** (d + 2) + 1,
            2,
        )
    return shapes


def _torch_shape(key: str, leaf: np.ndarray) -> tuple[int, ...]:
    """Shape in PyTorch of a UNet parameter (conv OIHW, linear (out, in), Conv1d (out, in, 1))."""
    s = leaf.shape
    if len(s) == 4:
        return (s[3], s[2], s[0], s[1])
    if len(s) == 2 and (".qkv." in key or ".proj_out." in key):
        return (s[1], s[0], 1)
    if len(s) == 2:
        return (s[1], s[0])
    return s


def authors_state_dict(variables, version: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random state dict in the authors' layout for the tiny preset (16 px, RGB)."""
    rng = np.random.default_rng(seed)
    shapes = {
        unet_keys.torch_key(path): _torch_shape(unet_keys.torch_key(path), np.asarray(leaf))
        for path, leaf in flatten(variables["params"]["unet"]).items()
    }
    tiny = medsegdiff.PRESETS["tiny"]
    hwm = generic_unet_shapes(
        3, tiny["encoder_base_channels"], tiny["encoder_num_pool"], tiny["encoder_max_channels"], 1
    )
    if version == "v1":
        hwm.update(v1_gate_shapes([4, 8], [16, 16], SIZE))
    shapes.update({f"hwm.{k}": v for k, v in hwm.items()})
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = np.array(7, np.int64)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            state[key] = rng.normal(size=shape).astype(np.float32)
    return state


@pytest.mark.parametrize("version", ["new", "v1"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_authors_state_dict_loads_totally_and_in_place(version, prefix):
    model, variables = _variables("tiny" if version == "new" else "tiny_v1")
    state = authors_state_dict(variables, version)
    if version == "v1":
        state["hwm.bottleneck_proj.weight"] = np.full((32, 16, 1, 1), 0.5, np.float32)
        state["hwm.bottleneck_proj.bias"] = np.arange(32, dtype=np.float32)
    loaded = load_medsegdiff_state_dict({prefix + k: v for k, v in state.items()}, variables)

    # every variable filled, with the template's shape and dtype
    want = flatten({k: variables[k] for k in ("params", "batch_stats")})
    got = flatten(loaded)
    assert set(got) == set(want)
    for path, leaf in want.items():
        assert got[path].shape == leaf.shape and got[path].dtype == leaf.dtype, path
    # every key consumed once: the loaded values add up to the state dict's
    total = sum(float(np.sum(v)) for k, v in state.items() if "num_batches" not in k)
    assert np.isclose(sum(float(np.sum(v)) for v in got.values()), total, rtol=1e-6)

    p, s = loaded["params"], loaded["batch_stats"]
    np.testing.assert_array_equal(
        p["encoder"]["enc1_conv1"]["conv"]["kernel"],
        state["hwm.conv_blocks_context.1.blocks.1.conv.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        p["encoder"]["bottleneck_conv1"]["norm"]["scale"],
        state["hwm.conv_blocks_context.3.1.blocks.0.instnorm.weight"],
    )
    np.testing.assert_array_equal(
        s["encoder"]["dec2_conv0"]["norm"]["var"],
        state["hwm.conv_blocks_localization.2.0.blocks.0.instnorm.running_var"],
    )
    np.testing.assert_array_equal(
        p["encoder"]["seg_out"]["kernel"][0, 0, :, 0], state["hwm.seg_outputs.0.weight"][0, :, 0, 0]
    )
    np.testing.assert_array_equal(
        p["unet"]["input_blocks_0_0"]["kernel"],
        state["input_blocks.0.0.weight"].transpose(2, 3, 1, 0),
    )
    if version == "v1":
        np.testing.assert_array_equal(
            p["gate_1"]["ffparser"]["complex_weight"],
            state["hwm.ffparser.1.complex_weight"].transpose(1, 2, 0, 3),
        )
        np.testing.assert_array_equal(
            p["gate_0"]["conv_b"]["kernel"][0, 0, :, 0],
            state["hwm.conv_trans_blocks_b.0.weight"][0, :, 0, 0],
        )
        np.testing.assert_array_equal(p["bottleneck_proj"]["bias"], np.arange(32))

    x_t, t, image = jnp.ones((1, SIZE, SIZE, 1)), jnp.array([5]), jnp.ones((1, SIZE, SIZE, 3))
    out = jax.jit(model.apply)(loaded, x_t, t, image)
    assert bool(jnp.all(jnp.isfinite(out["out"]))) and bool(jnp.all(jnp.isfinite(out["cal"])))


def test_v1_bottleneck_projection_kept_from_template_when_absent():
    _, variables = _variables("tiny_v1")
    state = authors_state_dict(variables, "v1")
    loaded = load_medsegdiff_state_dict(state, variables)
    np.testing.assert_array_equal(
        loaded["params"]["bottleneck_proj"]["kernel"],
        variables["params"]["bottleneck_proj"]["kernel"],
    )
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    with pytest.raises(ValueError, match=r"hwm\.bottleneck_proj\.weight"):
        load_medsegdiff_state_dict(state, abstract)


def test_abstract_template_and_npz_file(tmp_path):
    _, variables = _variables("tiny")
    state = authors_state_dict(variables, "new")
    path = tmp_path / "medsegdiff.npz"
    np.savez(path, **state)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    loaded = load_medsegdiff_state_dict(path, abstract)
    np.testing.assert_array_equal(
        loaded["batch_stats"]["encoder"]["enc0_conv0"]["norm"]["mean"],
        state["hwm.conv_blocks_context.0.blocks.0.instnorm.running_mean"],
    )


def test_batch_counters_are_optional():
    _, variables = _variables("tiny")
    state = authors_state_dict(variables, "new")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    load_medsegdiff_state_dict(state, variables)


def test_unknown_missing_and_misshaped_keys_are_all_listed():
    _, variables = _variables("tiny")
    state = authors_state_dict(variables, "new")
    state["hwm.extra_head.weight"] = np.zeros((1,), np.float32)
    del state["hwm.conv_blocks_localization.1.1.blocks.0.conv.bias"]
    state["hwm.conv_blocks_context.2.blocks.0.conv.weight"] = np.zeros((16, 8, 1, 1), np.float32)
    state["output_blocks.0.0.in_layers.0.weight"] = np.zeros((3,), np.float32)
    with pytest.raises(StateDictError) as info:
        load_medsegdiff_state_dict(state, variables)
    err = info.value
    assert err.unknown == ["hwm.extra_head.weight"]
    assert (
        len(err.missing) == 1
        and "conv_blocks_localization.1.1.blocks.0.conv.bias" in err.missing[0]
    )
    assert len(err.misshaped) == 2
    message = str(err)
    for key in (
        "hwm.extra_head.weight",
        "conv_blocks_localization.1.1.blocks.0.conv.bias",
        "conv_blocks_context.2.blocks.0.conv.weight",
        "output_blocks.0.0.in_layers.0.weight",
    ):
        assert key in message


def test_v1_checkpoint_into_new_model_is_rejected():
    _, v1_vars = _variables("tiny_v1")
    _, new_vars = _variables("tiny")
    with pytest.raises(StateDictError) as info:
        load_medsegdiff_state_dict(authors_state_dict(v1_vars, "v1"), new_vars)
    assert any("ffparser" in k for k in info.value.unknown)


def test_mask_only_model_reports_encoder_keys_as_unknown():
    _, variables = _variables("tiny", "mask_only")
    _, full = _variables("tiny")
    state = authors_state_dict(full, "new")
    # the mask-only UNet's first conv sees 1 channel, the checkpoint's 4
    state["input_blocks.0.0.weight"] = state["input_blocks.0.0.weight"][:, -1:]
    with pytest.raises(StateDictError) as info:
        load_medsegdiff_state_dict(state, variables)
    assert info.value.unknown and all(k.startswith("hwm.") for k in info.value.unknown)
    assert not info.value.missing and not info.value.misshaped


def _nnunet_variables(norm: str = "batch"):
    cfg = _config("nnunet", "tiny", "feedforward")
    cfg.encoder_base_channels, cfg.encoder_max_channels, cfg.encoder_norm = 4, 16, norm
    model = nnunet.build(cfg, image_channels=3)
    x, image = jnp.zeros((1, SIZE, SIZE, 1)), jnp.zeros((1, SIZE, SIZE, 3))
    shapes = jax.eval_shape(model.init, _key(0), x, jnp.zeros((1,), jnp.int32), image)
    return model, jax.tree.map(lambda s: np.ones(s.shape, np.float32), shapes)


def test_nnunet_baseline_reads_medsegdiffs_encoder():
    _, msd_vars = _variables("tiny")
    state = authors_state_dict(msd_vars, "new")
    msd = load_medsegdiff_state_dict(state, msd_vars)
    model, variables = _nnunet_variables()
    base = load_nnunet_state_dict(
        {"module." + k: v for k, v in state.items()}, variables, prefix="hwm."
    )
    for coll in ("params", "batch_stats"):
        want, got = flatten(msd[coll]["encoder"]), flatten(base[coll]["unet"])
        assert set(want) == set(got)
        for path in want:
            np.testing.assert_array_equal(got[path], want[path])
    image = jax.random.normal(_key(1), (1, SIZE, SIZE, 3))
    assert model.apply(base, jnp.zeros((1, SIZE, SIZE, 1)), jnp.zeros((1,), jnp.int32), image)[
        "out"
    ].shape == (1, SIZE, SIZE, 1)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_nnunet_baseline_reads_a_generic_unet_state_dict(norm):
    _, variables = _nnunet_variables(norm)
    shapes = generic_unet_shapes(3, 4, 3, 16, 1, batch_norm=norm == "batch")
    rng = np.random.default_rng(0)
    state = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    loaded = load_nnunet_state_dict(state, variables)
    assert set(flatten(loaded)) == set(flatten({k: variables[k] for k in variables}))
    state["conv_blocks_context.0.blocks.0.conv.weight"] = np.zeros((4, 2, 3, 3), np.float32)
    with pytest.raises(StateDictError, match=r"conv_blocks_context\.0\.blocks\.0\.conv\.weight"):
        load_nnunet_state_dict(state, variables)
