"""Importers of the authors' PyTorch state dicts, checked on dicts written in their key layout.

The expected PyTorch keys and shapes come from a hand-written description of the authors'
``UNetModel``/``RRDBNet`` for a tiny config (`importer_support`), not from the importer's
own mapping.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from importer_support import EMB, random_state, rrdb_keys, unet_keys
from test_models_ensemdiff import inputs
from test_models_ensemdiff import tiny_config as ensemdiff_config
from test_models_segdiff import tiny_config as segdiff_config

from jdiffseg.models import build_model, tree_size
from jdiffseg.models.importers import (
    StateDictError,
    load_ensemdiff_state_dict,
    load_segdiff_state_dict,
    read_state_dict,
)
from jdiffseg.models.params import abstract_variables


def template(model_config, mode: str = "diffusion"):
    model = build_model(model_config, image_channels=3)
    x_t, _, image = inputs(mode)
    return model, abstract_variables(model, x_t.shape, None if image is None else image.shape)[
        "params"
    ]


def check_total(params, abstract, state) -> None:
    """Every param filled with the right shape and dtype, and every value used."""
    assert jax.tree.structure(params) == jax.tree.structure(abstract)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(abstract), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
    assert tree_size(params) == sum(v.size for v in state.values())
    assert len(jax.tree.leaves(params)) == len(state)


def test_ensemdiff_mapping_is_total_and_converts_layouts():
    _, abstract = template(ensemdiff_config("diffusion"))
    state = random_state(unet_keys(4, 2))
    params = load_ensemdiff_state_dict(state, abstract)
    check_total(params, abstract, state)
    u = params["unet"]
    np.testing.assert_array_equal(
        u["input_blocks_0_0"]["kernel"], state["input_blocks.0.0.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        u["input_blocks_3_1"]["qkv"]["kernel"], state["input_blocks.3.1.qkv.weight"][:, :, 0].T
    )
    np.testing.assert_array_equal(
        u["time_embed"]["dense1"]["kernel"], state["time_embed.2.weight"].T
    )
    np.testing.assert_array_equal(
        u["output_blocks_1_0"]["out_norm"]["scale"], state["output_blocks.1.0.out_layers.0.weight"]
    )
    np.testing.assert_array_equal(u["out_norm"]["bias"], state["out.0.bias"])
    np.testing.assert_array_equal(
        u["output_blocks_2_0"]["skip"]["bias"], state["output_blocks.2.0.skip_connection.bias"]
    )


def test_module_prefix_and_npz(tmp_path):
    _, abstract = template(ensemdiff_config("diffusion"))
    state = random_state(unet_keys(4, 2))
    plain = load_ensemdiff_state_dict(state, abstract)
    path = tmp_path / "ckpt.npz"
    np.savez(path, **{"module." + k: v for k, v in state.items()})
    assert set(read_state_dict(path)) == set(state)
    from_file = load_ensemdiff_state_dict(path, abstract)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(from_file), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_ensemdiff_state_dict(tmp_path / "missing.pt", abstract)


def test_mask_only_and_image_generation_first_conv():
    for mode, cin, cout in (("mask_only", 1, 2), ("image_generation", 3, 6)):
        _, abstract = template(ensemdiff_config(mode), mode)
        state = random_state(unet_keys(cin, cout))
        check_total(load_ensemdiff_state_dict(state, abstract), abstract, state)


def test_errors_list_unknown_missing_and_misshaped_keys():
    _, abstract = template(ensemdiff_config("diffusion"))
    state = random_state(unet_keys(4, 2))
    del state["middle_block.1.qkv.bias"]
    state["label_emb.weight"] = np.zeros((10, EMB), np.float32)
    state["out.2.weight"] = np.zeros((3, 32, 3, 3), np.float32)  # 3 outputs instead of 2
    with pytest.raises(StateDictError) as err:
        load_ensemdiff_state_dict(state, abstract)
    e = err.value
    assert e.unknown == ["label_emb.weight"]
    assert len(e.missing) == 1 and e.missing[0].startswith("middle_block.1.qkv.bias")
    assert len(e.misshaped) == 1 and e.misshaped[0].startswith("out.2.weight (3, 32, 3, 3)")
    message = str(e)
    for key in ("label_emb.weight", "middle_block.1.qkv.bias", "out.2.weight"):
        assert key in message


def test_segdiff_mapping_is_total():
    _, abstract = template(segdiff_config("diffusion"))
    keys = {**unet_keys(1, 1), **rrdb_keys(1, 16, 8, 32)}
    state = random_state(keys)
    params = load_segdiff_state_dict(state, abstract)
    check_total(params, abstract, state)
    np.testing.assert_array_equal(
        params["rrdb"]["RRDB_trunk_0"]["RDB3"]["conv4"]["kernel"],
        state["rrdb.RRDB_trunk.0.RDB3.conv4.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        params["unet"]["input_blocks_1_0"]["emb_proj"]["kernel"],
        state["input_blocks.1.0.emb_layers.1.weight"].T,
    )


def test_segdiff_without_image_branch_rejects_rrdb_keys():
    _, abstract = template(segdiff_config("mask_only"), "mask_only")
    state = random_state({**unet_keys(1, 1), **rrdb_keys(1, 16, 8, 32)})
    with pytest.raises(StateDictError) as err:
        load_segdiff_state_dict(state, abstract)
    assert err.value.unknown and all(k.startswith("rrdb.") for k in err.value.unknown)
    assert not err.value.missing and not err.value.misshaped


def test_loaded_params_run():
    model, abstract = template(segdiff_config("diffusion"))
    state = random_state({**unet_keys(1, 1), **rrdb_keys(1, 16, 8, 32)})
    params = load_segdiff_state_dict(state, abstract)
    x_t, t, image = inputs("diffusion")
    out = jax.jit(model.apply)({"params": params}, x_t, t, image)["out"]
    assert out.shape == (2, 8, 8, 1) and bool(jnp.all(jnp.isfinite(out)))
