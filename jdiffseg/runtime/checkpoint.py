"""Checkpoints of a run: the one module that talks to orbax.

Layout: `WORKDIR/checkpoints/<step>/` with three items: 'state' (the train state pytree),
'data' (one JSON file per process with the grain iterator state, so a resumed run reads exactly
the batches an uninterrupted one would) and 'meta' (step and validation metrics). orbax writes
each step into a temporary directory and renames it when complete, so a crash mid-save leaves
the previous checkpoints as they were and the unfinished directory is never restored.

Kept: the latest `keep` steps plus the best one by a validation metric (higher is better for
Dice/IoU, lower for losses, ECE, Brier and NLL).

Damage: 'latest' and 'best' restore the first step that restores ('best': the best scored first,
then the newest). A step that fails while another restores is named in one warning line; a
writer (the trainer) moves it aside to `<step>.corrupt`, never deleting it, while a `read_only`
reader (evaluate, analyze) only skips it and writes nothing. An explicitly asked step fails
loudly instead. A save that cannot be written (no space, no permission) raises an
`io_errors.RunIOError` whose message is one line, after the unfinished temporary directory is
removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from grain import checkpoint as grain_checkpoint
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from orbax.checkpoint import checkpoint_managers as policies

from jdiffseg.runtime import io_errors, run_dir

CHECKPOINT_DIR = "checkpoints"
LOWER_IS_BETTER = ("loss", "ece", "brier", "nll", "mse")
ITEMS = ("state", "data", "meta")
CORRUPT_SUFFIX = ".corrupt"
_TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's name for a step still being written


class CheckpointRestoreError(ValueError):
    """The checkpoint asked for, or every checkpoint of a run, fails to restore."""


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
        self._workdir = workdir
        self.directory = checkpoint_dir(workdir)
        self.best_metric = best_metric
        self._read_only = read_only
        self._saving: int | None = None  # the step of the last save not yet known to be on disk
        self._broken = False  # a save failed: orbax's manager re-raises on every later call
        io_errors.quiet_orbax_noise()
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
        ranked = self._ranked_by_metric()
        return ranked[0] if ranked else None

    def _ranked_by_metric(self) -> list[int]:
        """The steps that record `best_metric`, best first. A step whose metadata does not read
        is left out (restoring it would fail anyway)."""
        if not self.best_metric:
            return []
        sign = 1.0 if higher_is_better(self.best_metric) else -1.0
        scored = []
        for step in self.all_steps():
            try:
                metrics = self.metrics(step)
            except (OSError, ValueError) as e:
                logging.warning("checkpoint step %d: unreadable metadata (%s)", step, e)
                continue
            if self.best_metric in metrics:
                scored.append((sign * metrics[self.best_metric], step))
        return [step for _, step in sorted(scored, reverse=True)]

    def resolve(self, which: int | str) -> int:
        """A step from 'latest', 'best' (falls back to latest) or an int; raises if none."""
        if _is_step(which):
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

    def candidates(self, which: int | str) -> list[int]:
        """The steps `restore(which)` tries, in order: an explicit step alone; otherwise the one
        `resolve` picks, then for 'best' the other scored steps best first, then the rest
        newest first."""
        first = self.resolve(which)
        if _is_step(which):
            return [first]
        ranked = self._ranked_by_metric() if which == "best" else []
        rest = ranked + [s for s in reversed(self.all_steps()) if s not in ranked]
        return [first, *(s for s in rest if s != first)]

    def save(
        self,
        step: int,
        state: Any,
        data_iterator: Any | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Starts saving `state` (and the iterator position) at `step`; returns before the write
        finishes when async. Saving a step that exists already does nothing. A failed write, of
        this save or of the previous one, raises RunIOError (or what orbax raised, when no OS
        error is behind it)."""
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
        with self._explain_write_failure(step):
            self._manager.save(
                step, args=ocp.args.Composite(**args), metrics=keep_metric, force=True
            )
        self._saving = step

    def restore(
        self, which: int | str, target: Any | None = None, data_iterator: Any | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of a step. `target` (arrays or `jax.ShapeDtypeStruct`s with shardings)
        gives the structure and placement; without it every array comes back whole on each of
        this job's devices, whatever mesh wrote it (trained on 8 devices, read on 1). The iterator,
        when given, is moved to the saved position in place.

        'latest' and 'best' go on to the next candidate when a step fails to restore, naming it
        in one warning line (a writer also moves it aside to `<step>.corrupt`); an explicit step
        that fails raises CheckpointRestoreError, as does a run where no step restores."""
        failed: list[tuple[int, Exception]] = []
        for step in self.candidates(which):
            try:
                out = self._restore_step(step, target, data_iterator)
            except Exception as e:  # orbax and tensorstore raise many types for damaged files
                if _is_step(which):
                    raise CheckpointRestoreError(
                        f"checkpoint step {step} in {self.directory} does not restore: "
                        f"{io_errors.short_reason(e)}"
                    ) from e
                failed.append((step, e))
                continue
            self._skip_damaged(failed, used=step)
            return out
        tried = "; ".join(f"step {s}: {io_errors.short_reason(e)}" for s, e in failed)
        raise CheckpointRestoreError(
            f"no checkpoint in {self.directory} restores, none was moved (tried {tried}). A "
            f"config that differs from the run's config.json fails like this; damaged files "
            f"mean starting again in a new --workdir"
        ) from failed[0][1]

    def _restore_step(
        self, step: int, target: Any | None, data_iterator: Any | None
    ) -> tuple[Any, dict[str, Any]]:
        if target is None:
            target = _replicated_here(os.path.join(self.directory, str(step), "state"))
        state_arg = ocp.args.StandardRestore(target)
        args = {"state": state_arg, "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            args["data"] = grain_checkpoint.CheckpointRestore(data_iterator)
        out = self._manager.restore(step, args=ocp.args.Composite(**args))
        return out["state"], dict(out["meta"])

    def _skip_damaged(self, failed: list[tuple[int, Exception]], used: int) -> None:
        """One warning line per step that failed while step `used` restored. A writer moves the
        failed steps aside to `<step>.corrupt` (then all processes see the same steps); a reader
        leaves them where they are."""
        if not failed:
            return
        for step, e in failed:
            reason = io_errors.short_reason(e)
            if self._read_only:
                logging.warning(
                    "checkpoint step %d in %s does not restore (%s); skipped it, using step %d",
                    step, self.directory, reason, used,
                )
                continue
            aside = _aside_name(self.directory, step)
            if run_dir.is_primary():
                os.rename(os.path.join(self.directory, str(step)), aside)
            logging.warning(
                "checkpoint step %d does not restore (%s); moved it aside to %s, resuming "
                "from step %d",
                step, reason, aside, used,
            )
        if not self._read_only:
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("checkpoint: damaged steps moved aside")
            self._manager.reload()

    @contextlib.contextmanager
    def _explain_write_failure(self, step: int) -> Iterator[None]:
        """Turns a failed write into a one-line RunIOError after removing the unfinished step."""
        try:
            yield
        except Exception as e:
            self._broken = True
            failing = _tmp_step(io_errors.os_error(e)) or self._saving or step
            self._remove_unfinished()
            failure = io_errors.io_failure(
                e,
                f"could not save checkpoint step {failing} in {self.directory}",
                last_complete(self._workdir),
            )
            if failure is None:
                raise
            raise failure from e

    def _remove_unfinished(self) -> None:
        """Deletes orbax's temporary directories (unfinished saves; never a finished step)."""
        if not run_dir.is_primary():
            return
        for _ in range(10):  # writes still in flight may recreate files for a moment
            leftover = [n for n in os.listdir(self.directory) if _TMP_MARK in n]
            if not leftover:
                return
            for name in leftover:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
            time.sleep(0.1)

    def wait(self) -> None:
        """Blocks until pending saves are on disk (RunIOError when one failed)."""
        if self._broken:
            return
        with self._explain_write_failure(self._saving or 0):
            self._manager.wait_until_finished()
        self._saving = None

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self.wait()
        if not self._broken:
            self._manager.close()


def last_complete(workdir: str) -> str:
    """'step N (<dir>/N)' for the newest finished checkpoint of a run, or 'none in <dir>'
    (orbax renames a step's directory to its number only once the step is complete)."""
    directory = checkpoint_dir(workdir)
    names = os.listdir(directory) if os.path.isdir(directory) else []
    steps = [int(n) for n in names if n.isdigit()]
    if not steps:
        return f"none in {directory}"
    return f"step {max(steps)} ({os.path.join(directory, str(max(steps)))})"


def _is_step(which: int | str) -> bool:
    return isinstance(which, int) or (isinstance(which, str) and which.isdigit())


def _aside_name(directory: str, step: int) -> str:
    """`<dir>/<step>.corrupt`, or `.corrupt-2`, ... when that exists already."""
    base = os.path.join(directory, f"{step}{CORRUPT_SUFFIX}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def _tmp_step(err: OSError | None) -> int | None:
    """The step of an orbax temporary directory named in an OS error's file name."""
    found = re.search(rf"/(\d+){re.escape(_TMP_MARK)}", (err and err.filename) or "")
    return int(found.group(1)) if found else None


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


def _replicated_here(state_dir: str) -> Any:
    """The saved state's structure as `jax.ShapeDtypeStruct`s replicated over this job's
    devices: a restore target for readers on another device layout than the writer's."""
    saved = ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir))
    everywhere = NamedSharding(Mesh(np.asarray(jax.devices()), ("all",)), PartitionSpec())
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=everywhere), saved)
