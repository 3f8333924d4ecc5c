"""Replica k of a population run as an ordinary run directory: its config (the population's
with the replica's seed and values, `config.population.replica_config`) and every kept
checkpoint's train state of that replica, with the replica's own validation metrics, so
`evaluate`, `analyze` and `report` treat it as any run. The data position is not exported:
the directory is for inference, not for training on."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax
import numpy as np

from jdiffseg.config import population
from jdiffseg.runtime import checkpoint, run_dir, variables


def export_replica(workdir: str | os.PathLike[str], k: int, out: str | os.PathLike[str]) -> str:
    """Writes replica `k` of the population in `workdir` to `out` (which must not exist);
    returns `out`. Written under a temporary name and renamed, so `out` is whole or absent."""
    config = run_dir.read_config(workdir)
    size = population.size(config)
    if size == 1:
        raise ValueError(f"{workdir} is not a population run (config.train.population=1)")
    replica_cfg = population.replica_config(config, k)  # raises for a k out of range
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; export into a new directory")
    variables.require_checkpoint(workdir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    run_dir.write_config(str(tmp), replica_cfg)
    best = run_dir.best_metric_name(config)
    source = checkpoint.Checkpointer(str(workdir), best_metric=best, async_save=False,
                                     read_only=True)
    target = checkpoint.Checkpointer(str(tmp), keep=len(source.all_steps()), best_metric=best,
                                     async_save=False)
    try:
        for step in source.all_steps():
            state, meta = source.restore(step)
            one = jax.tree.map(np.asarray, variables.select_replica(state, k))
            suffix = f"_replica{k}"
            metrics = {name.removesuffix(suffix): v
                       for name, v in (meta.get("metrics") or {}).items()
                       if name.endswith(suffix)}
            target.save(step, one, metrics=metrics or None)
    finally:
        source.close()
        target.close()
    if run_dir.is_finished(workdir):
        run_dir.write_finished(str(tmp), {"step": step, "replica_of": str(workdir), "replica": k})
    os.replace(tmp, out)
    return str(out)
