"""Model variables of a trained run for inference: restored from its checkpoint and checked
against what its config builds, so a config that no longer fits the weights stops with the
differences listed instead of failing deep inside the model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from jdiffseg.config import population
from jdiffseg.models import modes
from jdiffseg.runtime import checkpoint, run_dir


def abstract_variables(model: Any, mode: str, image_shape: tuple[int, ...]) -> Any:
    """Shapes of the variables `model.init` creates for one image of `image_shape` (H, W, C)."""
    x_t, t, image = modes.init_inputs(mode, (1, *image_shape), model.mask_channels)
    key = jax.random.key(0)
    return jax.eval_shape(
        lambda: model.init({"params": key, "dropout": key}, x_t, t, image, train=False)
    )


def shape_map(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in leaves}


def check_variables_match(
    variables: Mapping[str, Any], template: Mapping[str, Any], where: str
) -> None:
    """Raises ValueError listing how restored variables differ from what the config builds."""
    problems = []
    for collection in sorted(set(template) | set(variables)):
        if collection not in variables:
            problems.append(f"collection {collection!r} missing from the checkpoint")
            continue
        if collection not in template:
            problems.append(f"checkpoint has collection {collection!r} the model does not use")
            continue
        have, want = shape_map(variables[collection]), shape_map(template[collection])
        for path in sorted(set(have) | set(want)):
            name = f"{collection}{path}"
            if path not in have:
                problems.append(f"{name}: missing from the checkpoint (config wants {want[path]})")
            elif path not in want:
                problems.append(f"{name}: in the checkpoint {have[path]} but not built by config")
            elif have[path] != want[path]:
                problems.append(f"{name}: checkpoint {have[path]} vs config {want[path]}")
    if problems:
        shown = "\n  ".join(problems[:8])
        more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise ValueError(
            f"the config does not match the checkpoint ({where}); "
            f"{len(problems)} difference(s):\n  {shown}{more}"
        )


def select_replica(tree: Any, k: int) -> Any:
    """Replica `k` of a population's pytree (every leaf has a leading replica axis)."""
    return jax.tree.map(lambda x: x[k], tree)


def require_checkpoint(workdir: str | os.PathLike[str]) -> None:
    """Raises FileNotFoundError, saying what to do, when the run has no checkpoint yet."""
    directory = checkpoint.checkpoint_dir(str(workdir))
    if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
        raise FileNotFoundError(
            f"no checkpoint in {directory}; train the run first "
            f"(`jdiffseg train --workdir={workdir}`)"
        )


def restore(
    workdir: str | os.PathLike[str],
    config: ml_collections.ConfigDict,
    model: Any,
    image_shape: tuple[int, ...],
    *,
    which: int | str,
    use_ema: bool,
    replica: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables, meta) of checkpoint `which` of the run in `workdir` (EMA parameters when
    `use_ema`), checked against the variables `model` builds for images of `image_shape`.

    'best' and 'latest' go on past a checkpoint that does not restore to the next one, naming
    the skipped step in a warning and leaving the run's files as they are (readers never write
    into a training run's checkpoints); an explicit step that does not restore raises
    `checkpoint.CheckpointRestoreError`. `meta['step']` is the step actually used.

    A population run (`train.population` > 1 in its config.json) needs `replica`: its
    variables are those of replica k alone, as an ordinary run's."""
    require_checkpoint(workdir)
    variables, meta = checkpoint.load_variables(str(workdir), which, use_ema=use_ema)
    size = population.size(run_dir.read_config(workdir))
    if size > 1 or replica is not None:
        if replica is None or not 0 <= replica < size:
            raise ValueError(
                f"{workdir} holds a population of {size} replicas; choose one with "
                f"--replica=k (0 <= k < {size})" if size > 1 else
                f"{workdir} is not a population run; --replica={replica} does not apply"
            )
        variables = select_replica(variables, replica)
    where = f"{os.path.join(str(workdir), 'config.json')} vs checkpoint step {meta.get('step')}"
    template = abstract_variables(model, config.model.mode, image_shape)
    check_variables_match(variables, template, where)
    return variables, meta
