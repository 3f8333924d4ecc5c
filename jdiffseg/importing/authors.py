"""`jdiffseg import`: the authors' PyTorch checkpoints as runs.

    jdiffseg import --checkpoint=savedmodel100000.pt --ema=emasavedmodel_0.9999_100000.pt \\
        --config=configs/ensemdiff.py:dataset=isic2016,preset=paper --workdir=runs/ens_authors

The config says which architecture and sizes the checkpoint has; the strict importers of
`jdiffseg.models.importers` read it (a state dict saved bare or under 'state_dict' /
'model_state_dict' / 'model', with or without DistributedDataParallel's `module.`; `.pt`/`.pth`
files need torch, `.npz` archives do not; SegFormer also takes a transformers checkpoint
directory or `.safetensors` file). Any unknown, missing or mis-shaped key stops the import
with the keys listed. A forward pass on a synthetic input checks the result before anything
is written. The run directory is assembled beside `workdir` and renamed into place, so a
failed import leaves nothing.

The run holds config.json, one checkpoint (step 0) in the format training writes, with the
`--ema` weights as its EMA parameters when given, and `imported.json` naming each source file
with its SHA-256; `eval.checkpoint` and `analysis.checkpoint` say 'latest' where they said
'best', as there is no validation metric to pick by. It has no optimiser state: it is for
inference, not for resuming training.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdiffseg.models import build_model, modes
from jdiffseg.models.importers import (
    load_ensemdiff_state_dict,
    load_medsegdiff_state_dict,
    load_nnunet_state_dict,
    load_segdiff_state_dict,
    read_state_dict,
)
from jdiffseg.models.importers.segformer import (
    load_segformer_checkpoint,
    load_segformer_state_dict,
    read_safetensors,
)
from jdiffseg.runtime import checkpoint, run_dir, variables
from jdiffseg.scoring import predictors

IMPORTED_STEP = 0
# Architectures whose importer needs initialised values for variables a checkpoint may lack.
NEEDS_VALUES = ("medsegdiff", "segformer")
SUPPORTED = ("ensemdiff", "segdiff", "medsegdiff", "nnunet", "segformer")


def sha256(path: Path) -> str:
    """The SHA-256 of a file, or of a directory's files in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _template(config: ml_collections.ConfigDict, model: Any, image_shape: tuple[int, ...]
              ) -> Mapping[str, Any]:
    """The variables the config builds: shapes, or initialised values where the importer may
    keep some (MedSegDiff v1's bottleneck projection, SegFormer's re-initialised head)."""
    if config.model.arch not in NEEDS_VALUES:
        return variables.abstract_variables(model, config.model.mode, image_shape)
    x_t, t, image = modes.init_inputs(config.model.mode, (1, *image_shape), model.mask_channels)
    key = jax.random.key(int(config.seed))
    init = jax.jit(lambda: model.init({"params": key, "dropout": key}, x_t, t, image,
                                      train=False))
    return jax.device_get(init())


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """A checkpoint file's state dict (unwrapped, without `module.`), as numpy arrays."""
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_state_dict(path)


def load_variables(path: Path, config: ml_collections.ConfigDict, model: Any,
                   template: Mapping[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """The model's variables from one checkpoint file (or SegFormer directory); strict."""
    arch = config.model.arch
    if arch == "segformer":
        if path.is_dir():
            return load_segformer_checkpoint(path, model, template, log=log)
        return load_segformer_state_dict(read_checkpoint(path), template, log=log)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; {arch} checkpoints are single files")
    state = read_checkpoint(path)
    if arch == "ensemdiff":
        return {"params": load_ensemdiff_state_dict(state, template["params"])}
    if arch == "segdiff":
        return {"params": load_segdiff_state_dict(state, template["params"])}
    if arch == "medsegdiff":
        return load_medsegdiff_state_dict(state, template)
    if arch == "nnunet":
        return load_nnunet_state_dict(state, template)
    raise ValueError(f"config.model.arch={arch!r} has no importer; supported: {SUPPORTED}")


def check_forward(config: ml_collections.ConfigDict, model: Any, loaded: Mapping[str, Any],
                  image_shape: tuple[int, ...], source: str) -> None:
    """Runs the model once on a synthetic input; raises unless the output is finite and of
    the mask's shape."""
    mode = config.model.mode
    x_t, _, image = modes.init_inputs(mode, (1, *image_shape), model.mask_channels)
    rng = np.random.default_rng(0)
    x_t = jnp.asarray(rng.normal(size=x_t.shape), jnp.float32)
    if image is not None:
        image = jnp.asarray(rng.uniform(-1, 1, image.shape), jnp.float32)
    t = jnp.full((1,), int(config.diffusion.num_timesteps) // 2, jnp.int32)
    out = np.asarray(jax.jit(lambda v: model.apply(v, x_t, t, image, train=False)["out"])(
        dict(loaded)))
    if out.shape[:3] != (1, *image_shape[:2]) or not np.isfinite(out).all():
        raise ValueError(f"{source}: the imported model's forward pass on a synthetic input gave "
                         f"shape {out.shape} with {int(np.sum(~np.isfinite(out)))} non-finite "
                         "values")


def _for_imported_run(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config as written: 'best' checkpoints become 'latest' (the run's one checkpoint
    has no validation metric to be best by)."""
    config = copy.deepcopy(config)
    for section in ("eval", "analysis"):
        if section in config and config[section].get("checkpoint") == "best":
            config[section].checkpoint = "latest"
    return config


def import_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike[str],
    *,
    ema_path: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Writes the run `workdir` from the authors' checkpoint (see the module docstring);
    returns what imported.json records."""
    workdir = Path(workdir)
    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"workdir {workdir} exists and is not empty; choose a new one")
    if config.model.mode == "image_generation":
        raise ValueError("config.model.mode='image_generation' models images, not masks")
    sources = {"params": Path(checkpoint_path)}
    if ema_path:
        sources["ema_params"] = Path(ema_path)
    for path in sources.values():
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
    size = int(config.data.image_size)
    image_shape = (size, size, 3)
    model = build_model(config.model, image_channels=3,
                        mask_channels=predictors.mask_channels(config))
    template = _template(config, model, image_shape)
    abstract = variables.abstract_variables(model, config.model.mode, image_shape)
    state: dict[str, Any] = {}
    for item, path in sources.items():
        loaded = load_variables(path, config, model, template, log)
        variables.check_variables_match(loaded, abstract, f"{path} vs the config")
        check_forward(config, model, loaded, image_shape, str(path))
        state[item] = loaded["params"]
        if "batch_stats" in loaded and item == "params":
            state["batch_stats"] = loaded["batch_stats"]
    record = {"arch": config.model.arch, "mode": config.model.mode,
              "sources": {item: {"file": path.name, "path": str(path.resolve()),
                                 "sha256": sha256(path)} for item, path in sources.items()}}
    config = _for_imported_run(config)
    staging = workdir.with_name(f".{workdir.name}.importing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        run_dir.write_config(str(staging), config)
        saver = checkpoint.Checkpointer(str(staging), best_metric=None, async_save=False)
        saver.save(IMPORTED_STEP, state)
        saver.close()
        run_dir.write_imported(str(staging), record)
        if workdir.exists():
            workdir.rmdir()
        os.replace(staging, workdir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record
