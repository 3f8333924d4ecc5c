"""Checkpoints of a run: the one module that talks to orbax.

Layout: `WORKDIR/checkpoints/<step>/` with three items: 'state' (the train state pytree),
'data' (one JSON file per process with the grain iterator state, so a resumed run reads exactly
the batches an uninterrupted one would) and 'meta' (step and validation metrics). orbax writes
each step into a temporary directory and renames it when complete, so a crash mid-save leaves
the previous checkpoints as they were and the unfinished directory is never restored.

Kept: the latest `keep` steps plus the best one by a validation metric (higher is better for
Dice/IoU, lower for losses, ECE, Brier and NLL).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from grain import checkpoint as grain_checkpoint
from orbax.checkpoint import checkpoint_managers as policies

from jdiffseg.runtime import run_dir

CHECKPOINT_DIR = "checkpoints"
LOWER_IS_BETTER = ("loss", "ece", "brier", "nll", "mse")
ITEMS = ("state", "data", "meta")


@contextlib.contextmanager
def _absl_verbosity(level: int) -> Iterator[None]:
    saved = logging.get_verbosity()
    logging.set_verbosity(level)
    try:
        yield
    finally:
        logging.set_verbosity(saved)


def higher_is_better(metric: str) -> bool:
    """Direction of a validation metric, from its name (val_dice: up, val_ece_top_label: down)."""
    name = metric.removeprefix("val_")
    return not any(part in name for part in LOWER_IS_BETTER)


def checkpoint_dir(workdir: str) -> str:
    """Where a run's checkpoints live."""
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


class _IteratorSnapshot:
    """An iterator state frozen at save time (the write may happen later, in the background)."""

    def __init__(self, iterator: Any) -> None:
        state = iterator.get_state()
        self._state = state if isinstance(state, bytes) else json.dumps(state).encode()

    def get_state(self) -> bytes:
        return self._state


class Checkpointer:
    """Saves and restores train state + data-iterator state of one run.

    All processes of a multi-host job must call `save` and `restore` together. `read_only`
    opens a finished run for inference without touching it.
    """

    def __init__(
        self,
        workdir: str,
        *,
        keep: int = 2,
        best_metric: str | None = "val_dice",
        async_save: bool = True,
        read_only: bool = False,
    ) -> None:
        if keep < 1:
            raise ValueError(f"config.train.keep_checkpoints must be >= 1, got {keep}")
        self.directory = checkpoint_dir(workdir)
        self.best_metric = best_metric
        policy: policies.PreservationPolicy = policies.LatestN(keep)
        if best_metric:
            sign = 1.0 if higher_is_better(best_metric) else -1.0
            best = policies.BestN(
                get_metric_fn=lambda m: sign * float(m[best_metric]),
                n=1,
                keep_checkpoints_without_metrics=False,
            )
            policy = policies.AnyPreservationPolicy([policy, best])
        # Opening read-only makes orbax warn that it will not save; that is the point here.
        with _absl_verbosity(logging.ERROR if read_only else logging.get_verbosity()):
            options = ocp.CheckpointManagerOptions(
                preservation_policy=policy,
                enable_async_checkpointing=async_save,
                create=not read_only,
                cleanup_tmp_directories=not read_only,
                read_only=read_only,
            )
            self._manager = ocp.CheckpointManager(
                self.directory,
                item_names=ITEMS,
                item_handlers={"data": grain_checkpoint.CheckpointHandler()},
                options=options,
            )

    def all_steps(self) -> list[int]:
        """Finished checkpoint steps, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest finished step, or None."""
        return self._manager.latest_step()

    def metrics(self, step: int) -> dict[str, float]:
        """The validation metrics saved with `step` ({} when none)."""
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(meta["meta"].get("metrics") or {})

    def best_step(self) -> int | None:
        """The kept step with the best `best_metric`; None when no step has it."""
        if not self.best_metric:
            return None
        sign = 1.0 if higher_is_better(self.best_metric) else -1.0
        scored = [
            (sign * m[self.best_metric], s)
            for s in self.all_steps()
            if self.best_metric in (m := self.metrics(s))
        ]
        return max(scored)[1] if scored else None

    def resolve(self, which: int | str) -> int:
        """A step from 'latest', 'best' (falls back to latest) or an int; raises if none."""
        if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
            step = int(which)
            if step not in self.all_steps():
                raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}")
            return step
        if which not in ("latest", "best"):
            raise ValueError(f"checkpoint must be 'latest', 'best' or a step, got {which!r}")
        step = self.best_step() if which == "best" else None
        if step is None:
            step = self.latest_step()
            if which == "best" and step is not None:
                logging.warning(
                    "no checkpoint in %s records %s; 'best' is the latest, step %d",
                    self.directory, self.best_metric, step,
                )
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
        return step

    def save(
        self,
        step: int,
        state: Any,
        data_iterator: Any | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Starts saving `state` (and the iterator position) at `step`; returns before the write
        finishes when async. Saving a step that exists already does nothing."""
        if step in self.all_steps():
            return
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        args = {
            "state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave({"step": int(step), "metrics": metrics}),
        }
        if data_iterator is not None:
            args["data"] = grain_checkpoint.CheckpointSave(_IteratorSnapshot(data_iterator))
        keep_metric = metrics if self.best_metric and self.best_metric in metrics else None
        self._manager.save(step, args=ocp.args.Composite(**args), metrics=keep_metric, force=True)

    def restore(
        self, which: int | str, target: Any | None = None, data_iterator: Any | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of a step. `target` (arrays or `jax.ShapeDtypeStruct`s with shardings)
        gives the structure and placement; without it arrays come back as saved. The iterator,
        when given, is moved to the saved position in place."""
        step = self.resolve(which)
        state_arg = (
            ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
        )
        args = {"state": state_arg, "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            args["data"] = grain_checkpoint.CheckpointRestore(data_iterator)
        out = self._manager.restore(step, args=ocp.args.Composite(**args))
        return out["state"], dict(out["meta"])

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """`jax.ShapeDtypeStruct`s (with shardings) of a pytree of arrays: a restore target."""

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)

    return jax.tree.map(one, tree)


def load_variables(workdir: str, which: int | str = "best", *, use_ema: bool = True) -> tuple[
    dict[str, Any], dict[str, Any]
]:
    """Model variables of a trained run for inference, as host arrays.

    Returns ({'params': EMA or raw params, 'batch_stats'?: ...}, meta) where meta has 'step' and
    the validation 'metrics' of that checkpoint.
    """
    # A bare checkpoint directory (no config.json, e.g. written by a script) has no best metric.
    has_config = os.path.exists(run_dir.config_path(workdir))
    best = run_dir.best_metric_name(run_dir.read_config(workdir)) if has_config else None
    ckpt = Checkpointer(workdir, best_metric=best, async_save=False, read_only=True)
    try:
        state, meta = ckpt.restore(which)
    finally:
        ckpt.close()
    # Imported weights or states saved without an EMA fall back to the raw parameters.
    params = state["params"]
    if use_ema and state.get("ema_params"):
        params = state["ema_params"]
    variables: dict[str, Any] = {"params": params}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    return variables, meta
