"""`jdiffseg predict` on NIfTI volumes: a run on the nnU-Net fixture (two channels, random
parameters) predicts a folder of nnU-Net channel files and a Decathlon 4D file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from run_support import write_run
from train_support import shrink_model, tiny_config
from volume_fixtures import SHAPE, SPACING, affine, case_volumes, save, write_nnunet

from jdiffseg.data import cases
from jdiffseg.data.pipeline import dataset_metadata, to_global
from jdiffseg.evaluation import evaluate
from jdiffseg.models import build_model
from jdiffseg.prediction import predict
from jdiffseg.runtime import run_dir, sharding, variables
from jdiffseg.scoring import predictors

CASES = ["toy_000", "toy_001", "toy_002", "toy_003"]


def _volume_run(root: Path, target: str = "foreground", num_classes: int = 1) -> Path:
    """A feed-forward run (deterministic per slice) on the nnU-Net fixture under `root`."""
    config = shrink_model(tiny_config(root / "data", mode="feedforward"))
    config.data.name, config.data.variant = "nnunet", "fixture"
    config.data.manual_dir = str(root / "raw")
    config.data.test_fraction = config.data.val_fraction = 0.25
    config.data.target, config.data.num_classes = target, num_classes
    workdir = root / f"run_{target}"
    write_run(workdir, config, image_channels=2)
    return workdir


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """(a binary run's workdir, the fixture's imagesTr/)."""
    root = tmp_path_factory.mktemp("predict_volumes")
    raw = write_nnunet(root / "raw", n=len(CASES))
    return _volume_run(root), raw / "imagesTr"


def _load(path: Path) -> nib.Nifti1Image:
    return nib.load(path)


def _reference_probs(workdir: Path, paths: list[Path]) -> np.ndarray:
    """The run's foreground probability on the case's grid, from its slices predicted in one
    batch straight from `read_case_slices` and restacked by `restack_prediction`."""
    config = run_dir.read_config(workdir)
    slices, geo = cases.read_case_slices(paths, dataset_metadata(config))
    model = build_model(config.model, image_channels=2, mask_channels=1)
    params, _ = variables.restore(workdir, config, model, slices.shape[1:],
                                  which=config.eval.checkpoint, use_ema=True)
    mesh = sharding.make_mesh()
    fn, _ = predictors.make_eval_predictor(config, model, params, slices.shape[1:], mesh)
    members = fn(params, to_global({"image": slices}, mesh)["image"], jax.random.key(0))
    p = np.asarray(members["members"]).mean(axis=1)  # (N, S, S, 1): one member
    labels = (p[..., 0] > 0.5).astype(np.uint8)
    _, volume = cases.restack_prediction(labels, geo, np.concatenate([1 - p, p], axis=-1))
    return volume[..., 1]


@pytest.mark.slow
def test_nnunet_folder_restacked_on_the_inputs_grid_and_resumed(run, tmp_path):
    workdir, images = run
    # One more case: toy_000 with its slices in reverse order. A feed-forward run predicts each
    # slice on its own, so its outputs must be toy_000's reversed along the slice axis.
    inputs = tmp_path / "in"
    for path in images.iterdir():
        (inputs / path.name).parent.mkdir(exist_ok=True)
        (inputs / path.name).write_bytes(path.read_bytes())
    for c in range(2):
        data = np.asarray(_load(images / f"toy_000_{c:04d}.nii.gz").dataobj)
        save(inputs / f"reversed_{c:04d}.nii.gz", data[:, :, ::-1].copy())
    out = tmp_path / "out"
    summary = predict.predict(workdir, inputs, out)
    names = sorted([*CASES, "reversed"])
    assert sorted(summary.written) == names and not summary.finished

    got = {}
    for name in names:
        mask, probs, unc = (_load(out / f"{name}{s}.nii.gz")
                            for s in ("_mask", "_probs", "_uncertainty"))
        for image in (mask, probs, unc):
            assert image.shape == SHAPE
            assert np.allclose(image.affine, affine())
            assert np.allclose(image.header.get_zooms()[:3], SPACING)
        m = np.asarray(mask.dataobj)
        p, u = probs.get_fdata(), unc.get_fdata()
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
        assert p.min() >= 0 and p.max() <= 1 and u.min() >= 0 and u.max() <= 1
        # Outside the fixture's body (rows 1..6, columns 2..10) the crop leaves certain background.
        body = np.zeros(SHAPE, bool)
        body[1:7, 2:11] = True
        assert not m[~body].any() and np.all(p[~body] == 0) and np.all(u[~body] == 0)
        got[name] = (m, p, u)
    assert any(got[n][0].any() for n in names)  # something was segmented
    reference = _reference_probs(workdir, sorted(images.glob("toy_001_*")))
    np.testing.assert_allclose(got["toy_001"][1], reference, atol=1e-4)
    assert len({got["toy_001"][1][:, :, k].tobytes() for k in range(SHAPE[2])}) == SHAPE[2]
    for a, b in zip(got["toy_000"], got["reversed"], strict=True):
        np.testing.assert_allclose(b, a[:, :, ::-1], atol=1e-5)

    with open(out / "cases.csv") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == names
    for name, row in rows.items():
        voxels = int(np.sum(got[name][0] == 1))
        assert float(row["voxels_foreground"]) == voxels
        assert float(row["mm3_foreground"]) == pytest.approx(voxels * np.prod(SPACING), rel=1e-5)
        assert row["shape"] == " ".join(map(str, SHAPE))
        assert float(row["entropy_mean"]) == pytest.approx(got[name][2].mean(), rel=1e-4)

    # Interrupted: toy_002 lost its summary, so it is redone; the others are left alone.
    (out / "toy_002.json").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith("toy_002")}
    again = predict.predict(workdir, inputs, out)
    assert again.written == ["toy_002"]
    assert sorted(again.finished) == sorted(set(names) - {"toy_002"})
    assert all(p.stat().st_mtime_ns == ns for p, ns in stamps.items() if p.name != "cases.csv")
    np.testing.assert_array_equal(np.asarray(_load(out / "toy_002_mask.nii.gz").dataobj),
                                  got["toy_002"][0])
    assert json.loads((out / "toy_002.json").read_text())["case"] == "toy_002"


@pytest.mark.slow
def test_reproduces_evaluate_per_case_volume_metrics(run, tmp_path):
    """The test split's cases predicted from their files are the volumes `evaluate` scored:
    Dice, precision and sensitivity against the label files match per_case.csv."""
    workdir, images = run
    evaluate.evaluate(workdir)
    with (workdir / "eval" / "per_case.csv").open() as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert rows and set(rows) <= set(CASES)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in rows:
        for path in images.glob(f"{case}_*.nii.gz"):
            (inputs / path.name).write_bytes(path.read_bytes())
    predict.predict(workdir, inputs, tmp_path / "out")
    for case, row in rows.items():
        mask = np.asarray(_load(tmp_path / "out" / f"{case}_mask.nii.gz").dataobj) > 0
        truth = np.asarray(_load(images.parent / "labelsTr" / f"{case}.nii.gz").dataobj) > 0
        tp = int(np.sum(mask & truth))
        assert mask.any() and truth.any(), case
        assert 2 * tp / (mask.sum() + truth.sum()) == pytest.approx(float(row["dice"]), rel=1e-5)
        assert tp / mask.sum() == pytest.approx(float(row["precision"]), rel=1e-5)
        assert tp / truth.sum() == pytest.approx(float(row["sensitivity"]), rel=1e-5)


@pytest.mark.slow
def test_a_4d_file_equals_its_channel_files_corrupt_ones_skip_wrong_channels_stop(
        run, tmp_path):
    workdir, _ = run
    image, _ = case_volumes(0, 2)  # toy_000 of the fixture, as one Decathlon-style 4D file
    save(tmp_path / "in4d" / "toy_000.nii.gz", image)
    (tmp_path / "in4d" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    summary = predict.predict(workdir, tmp_path / "in4d", tmp_path / "out4d", keep_going=True)
    assert summary.written == ["toy_000"] and list(summary.skipped) == ["broken"]
    assert "broken.nii.gz" in summary.skipped["broken"]
    channel_files = tmp_path / "in3d"
    for c in range(2):
        save(channel_files / f"toy_000_{c:04d}.nii.gz", image[..., c])
    predict.predict(workdir, channel_files, tmp_path / "out3d")
    for suffix in ("_mask", "_probs", "_uncertainty"):
        a = np.asarray(_load(tmp_path / "out4d" / f"toy_000{suffix}.nii.gz").dataobj)
        b = np.asarray(_load(tmp_path / "out3d" / f"toy_000{suffix}.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b, err_msg=suffix)

    # One channel file per case (the run takes CT and T2): stops naming the case, even with
    # --keep_going, and writes nothing for it.
    single = tmp_path / "single"
    save(single / "lone_0000.nii.gz", image[..., 0])
    with pytest.raises(predict.PredictError, match=r"case lone .*1 channel\(s\).*2: CT, T2"):
        predict.predict(workdir, single, tmp_path / "out1", keep_going=True)
    assert not list((tmp_path / "out1").glob("lone*"))
    # A 2D image given to a volumetric run is refused before anything is read.
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photo.png")
    with pytest.raises(ValueError, match="trained on volumes"):
        predict.predict(workdir, tmp_path / "photo.png", tmp_path / "out2")


@pytest.mark.slow
def test_a_multiclass_run_writes_class_indices_and_a_4d_probability_map(run, tmp_path):
    _, images = run
    workdir = _volume_run(images.parents[2], target="classes", num_classes=2)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in sorted(images.glob("toy_003_*")):
        (inputs / path.name).write_bytes(path.read_bytes())
    predict.predict(workdir, inputs, tmp_path / "out")
    mask = np.asarray(_load(tmp_path / "out" / "toy_003_mask.nii.gz").dataobj)
    probs = _load(tmp_path / "out" / "toy_003_probs.nii.gz")
    assert mask.shape == SHAPE and set(np.unique(mask)) <= {0, 1, 2}
    assert probs.shape == (*SHAPE, 3) and np.allclose(probs.affine, affine())
    np.testing.assert_allclose(probs.get_fdata().sum(axis=-1), 1.0, atol=1e-5)
    with open(tmp_path / "out" / "cases.csv") as f:
        (row,) = csv.DictReader(f)
    for c, name in ((1, "organ"), (2, "lesion")):
        assert float(row[f"voxels_{name}"]) == np.sum(mask == c)
        assert float(row[f"mm3_{name}"]) == pytest.approx(
            np.sum(mask == c) * np.prod(SPACING), rel=1e-5)
