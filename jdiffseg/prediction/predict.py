"""`jdiffseg predict`: a trained run's masks, class probabilities and uncertainty for new images
or NIfTI volumes (the readers: `prediction.images`, `prediction.volumes`).

    jdiffseg predict --workdir=runs/ens --input=my_images/ --output=my_masks/
    jdiffseg predict --workdir=runs/ens --input=scan.png --output=out --config.eval.sampler=dpmpp_2m

The run's `config.json` is read back (`--config.*` overrides, normally `eval.*`) and its
checkpoint restored as `evaluate` does (`eval.checkpoint`, EMA parameters unless
`eval.use_ema=False`). The predictor is `evaluate`'s (`scoring.predictors.make_eval_predictor`):
diffusion ensembles with any sampler, fused by `eval.fusion` at `eval.threshold`; feed-forward
models with or without test-time augmentation. Inputs are prepared as the run's dataset was.

Cases are sorted by name and their slices laid out in that order in batches of
`data.eval_batch_size`; batch b draws its noise from `fold_in(key(seed), b)`, as `evaluate`
draws it for its b-th batch, so the test split's images written as files in split order get
`evaluate`'s fused masks. A case's slice keeps its place when other cases are finished or
unreadable, so a resumed run gives every remaining case the masks a single run would have.
Batches whose cases are all finished are not run. The batch is sharded over every device.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jdiffseg.config import population
from jdiffseg.data import registry
from jdiffseg.data.builders.common import BINARY_CLASSES, class_names
from jdiffseg.data.images import DataError
from jdiffseg.data.pipeline import to_global
from jdiffseg.models import build_model
from jdiffseg.prediction import outputs
from jdiffseg.prediction.images import ImageReader
from jdiffseg.prediction.readers import (
    Case,
    Loaded,
    PredictError,
    Prediction,
    Reader,
    find_cases,
    run_channels,
)
from jdiffseg.prediction.volumes import VolumeReader
from jdiffseg.runtime import run_dir, runlog, sharding, variables
from jdiffseg.scoring import fusion, multiclass, predictors

READERS: tuple[Reader, ...] = (ImageReader(), VolumeReader())


@dataclasses.dataclass
class Summary:
    """What a predict run did: cases written now, found finished, skipped (name: why)."""

    written: list[str]
    finished: list[str]
    skipped: dict[str, str]
    cases_csv: Path


def run_class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The run's class names, background first: the dataset's when it is prepared here, else
    generic ones (predicting needs no training data)."""
    num_classes = int(config.data.get("num_classes", 1))
    if num_classes == 1:
        return BINARY_CLASSES
    try:
        builder = registry.make_builder(config.data)
        if builder.is_prepared():
            return class_names(builder.info)
    except (ValueError, OSError):
        pass
    return ("background", *(f"class{c}" for c in range(1, num_classes + 1)))


def _postprocess(config: ml_collections.ConfigDict, channels: int):
    """A jitted `members (B, n, S, S, K) -> labels, probs, entropy, MI`: fusion as evaluate
    fuses (`eval.fusion`, `eval.threshold`), the member mean, the uncertainty maps."""
    method, threshold = str(config.eval.fusion), float(config.eval.threshold)

    def run(members: jax.Array) -> dict[str, jax.Array]:
        if channels > 1:
            maps = multiclass.uncertainty_maps(members)
            labels = multiclass.fuse(members, method).labels
            mean = multiclass.ensemble_mean(members)
            entropy, information = maps["entropy"], maps["mutual_information"]
        else:
            maps = fusion.uncertainty_maps(members)
            labels = fusion.fuse(members, method, threshold=threshold).mask[..., 0]
            mean = fusion.ensemble_mean(members)
            entropy, information = maps["entropy"][..., 0], maps["mutual_information"][..., 0]
        return {"labels": labels.astype(jnp.int32), "probs": mean, "entropy": entropy,
                "mutual_information": information}

    return jax.jit(run)


def _check_paths(input_path: Path, out_dir: Path) -> None:
    inside = out_dir.resolve() == input_path.resolve() or \
        input_path.resolve() in out_dir.resolve().parents
    if input_path.is_dir() and inside:
        raise ValueError(f"--output={out_dir} lies inside --input={input_path}; its masks "
                         "would be read as inputs next time: choose a folder outside it")


def _complete(reader: Reader, case: Case, out_dir: Path) -> bool:
    return all(p.is_file() for p in reader.outputs(case, out_dir))


class _Cases:
    """The cases with their slice positions, read when first needed and kept until written."""

    def __init__(self, found: list[tuple[Reader, Case]], config: ml_collections.ConfigDict,
                 out_dir: Path, keep_going: bool) -> None:
        self.found, self.config, self.out_dir = found, config, out_dir
        self.keep_going = keep_going
        self.channels = run_channels(config)
        self.done = [_complete(r, c, out_dir) for r, c in found]
        self.skipped: dict[str, str] = {}
        self.loaded: dict[int, Loaded] = {}
        self.results: dict[int, list[dict[str, np.ndarray]]] = {}
        counts = [reader.num_slices(case, config) for reader, case in found]
        # slot -> (case index, slice index)
        self.slots = [(i, s) for i, n in enumerate(counts) for s in range(n)]

    def pending(self, i: int) -> bool:
        return not self.done[i] and self.found[i][1].name not in self.skipped

    def load(self, i: int) -> Loaded | None:
        """Case i's slices, or None when it is skipped (unreadable, with --keep_going)."""
        if i in self.loaded or not self.pending(i):
            return self.loaded.get(i)
        reader, case = self.found[i]
        try:
            loaded = reader.read(case, self.config)
        except DataError as e:
            if not self.keep_going:
                raise PredictError(f"case {case.name}: {e} (--keep_going skips it)") from e
            logging.warning("skipping case %s: %s", case.name, e)
            self.skipped[case.name] = str(e)
            return None
        if loaded.slices.shape[-1] != self.channels:
            raise PredictError(
                f"case {case.name} ({case.paths[0]}) has {loaded.slices.shape[-1]} channel(s) "
                f"but the run's model takes {self.channels}")
        self.loaded[i] = loaded
        return loaded


def _finish_case(cases: _Cases, i: int, names: tuple[str, ...], write: bool) -> None:
    """Writes case i from its slices' predictions (when `write`) and forgets them."""
    reader, case = cases.found[i]
    rows, loaded = cases.results.pop(i), cases.loaded.pop(i)
    if write:
        stacked = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        reader.write(case, loaded, Prediction(**stacked), cases.out_dir, names)


def predict(
    workdir: str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config_overrides: Mapping[str, Any] | None = None,
    *,
    keep_going: bool = False,
    replica: int | None = None,
) -> Summary:
    """Predicts every case under `input_path` with the run in `workdir` into `out_dir` (see
    the module docstring). Cases whose outputs are complete are left as they are. A
    population run predicts with its replica `replica` (its parameters and seed)."""
    workdir, input_path, out_dir = Path(workdir), Path(input_path), Path(out_dir)
    config = run_dir.read_config(workdir, config_overrides)
    if replica is not None and population.size(config) > 1:
        config = population.replica_config(config, replica)
    if config.model.mode == "image_generation":
        raise ValueError("config.model.mode='image_generation' models images, not masks; "
                         "there is nothing to segment")
    _check_paths(input_path, out_dir)
    found = find_cases(input_path, READERS)
    for reader in {id(r): r for r, _ in found}.values():
        reader.check_run(config)
    cases = _Cases(found, config, out_dir, keep_going)
    names = run_class_names(config)
    e = config.eval
    sharding.maybe_initialize_distributed(config.train)
    variables.require_checkpoint(workdir)
    mesh = sharding.make_mesh()
    batch_size = int(config.data.eval_batch_size)
    per_process = sharding.check_batch_size(batch_size, mesh, "config.data.eval_batch_size")
    size = int(config.data.image_size)
    image_shape = (size, size, cases.channels)
    channels = predictors.mask_channels(config)
    model = build_model(config.model, image_channels=cases.channels, mask_channels=channels)
    params, meta = variables.restore(workdir, config, model, image_shape,
                                     which=e.checkpoint, use_ema=bool(e.use_ema),
                                     replica=replica)
    params = jax.device_put(params, sharding.replicated(mesh))
    predict_fn, described = predictors.make_eval_predictor(config, model, params, image_shape,
                                                           mesh)
    post = _postprocess(config, channels)
    logging.info("predict with %s (step %s) of %s", described, meta.get("step"), workdir)

    key = jax.random.key(int(config.seed))
    finished = [c.name for (_, c), d in zip(found, cases.done, strict=True) if d]
    written: list[str] = []
    primary = jax.process_index() == 0
    todo = sum(cases.pending(i) for i in range(len(found)))
    progress = runlog.progress_bar(todo, "predict", "case", enabled=primary)
    lo = jax.process_index() * per_process
    num_batches = -(-len(cases.slots) // batch_size)
    for b in range(num_batches):
        slots = cases.slots[b * batch_size:(b + 1) * batch_size]
        if not any(cases.pending(i) for i, _ in slots):
            continue
        images = np.zeros((batch_size, *image_shape), np.float32)
        for row, (i, s) in enumerate(slots):
            loaded = cases.load(i)
            if loaded is not None:
                images[row] = loaded.slices[s]
        if not any(i in cases.loaded for i, _ in slots):
            continue  # every pending case of the batch was skipped
        arrays = to_global({"image": images[lo:lo + per_process]}, mesh)
        out = predict_fn(params, arrays["image"], jax.random.fold_in(key, b))
        host = sharding.fetch(post(out["members"]))
        for row, (i, _) in enumerate(slots):
            if i not in cases.loaded:
                continue
            cases.results.setdefault(i, []).append({k: v[row] for k, v in host.items()})
            if len(cases.results[i]) == len(cases.loaded[i].slices):
                _finish_case(cases, i, names, primary)
                written.append(found[i][1].name)
                progress.update(1)
    progress.close()
    csv_path = out_dir / outputs.CASES_FILE
    if primary:
        rows = [outputs.read_summary(reader.outputs(case, out_dir)[-1])
                for reader, case in found if _complete(reader, case, out_dir)]
        outputs.write_cases_csv(out_dir, rows)
    skipped = dict(cases.skipped)
    return Summary(written, finished, skipped, csv_path)
