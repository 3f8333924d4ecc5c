"""`jdiffseg predict` on a tiny run: evaluate's fused masks reproduced, outputs at the inputs'
sizes, resuming, unreadable inputs, a feed-forward SegFormer."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prediction_support import NUM_TEST, predict_config, write_images
from run_support import write_run

from jdiffseg.cli import main as cli_main
from jdiffseg.data.pipeline import data_source
from jdiffseg.evaluation import evaluate
from jdiffseg.prediction import predict
from jdiffseg.runtime import run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny diffusion workdir; its synthetic dataset is prepared by the first evaluate."""
    root = tmp_path_factory.mktemp("predict")
    workdir = root / "run"
    write_run(workdir, predict_config(root / "data"))
    return workdir


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _per_image(workdir: Path) -> list[dict[str, str]]:
    with open(workdir / "eval" / "per_image.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_reproduces_evaluate_on_the_test_split_written_as_files(run, tmp_path):
    evaluate.evaluate(run)
    config = run_dir.read_config(run)
    source = data_source(config, "test")
    folder = tmp_path / "test_split"
    folder.mkdir()
    truth = []
    for i in range(NUM_TEST):  # in split order: case names sort as the records do
        record = source[i]
        Image.fromarray(record["image"]).save(folder / f"case_{i}.png")
        truth.append(record["mask"][..., 0] > 0)
    summary = predict.predict(run, folder, tmp_path / "out")
    assert sorted(summary.written) == [f"case_{i}" for i in range(NUM_TEST)]
    rows = _per_image(run)
    assert [r["id"] for r in rows] == [f"test/{i}" for i in range(NUM_TEST)]
    fused = [_mask(tmp_path / "out" / f"case_{i}_mask.png") > 0 for i in range(NUM_TEST)]
    assert len({m.tobytes() for m in fused}) > 1  # the masks differ: the noise matters
    for i, (mask, gt, row) in enumerate(zip(fused, truth, rows, strict=True)):
        tp, den = np.sum(mask & gt), mask.sum() + gt.sum()
        dice = 2 * tp / den if den else 1.0
        assert dice == pytest.approx(float(row["dice"]), abs=1e-5), i
        assert mask.mean() == pytest.approx(float(row["foreground_pred"]), abs=1e-5), i
        entropy = np.load(tmp_path / "out" / f"case_{i}_uncertainty.npy")
        assert entropy.mean() == pytest.approx(float(row["uncertainty_entropy"]), abs=1e-4), i


SIZES = [(16, 16), (23, 37), (40, 12), (9, 9), (31, 20)]


def _outputs(out: Path, name: str) -> dict[str, np.ndarray]:
    return {"mask": _mask(out / f"{name}_mask.png"),
            "probs": np.load(out / f"{name}_probs.npy"),
            "uncertainty": np.load(out / f"{name}_uncertainty.npy")}


@pytest.mark.slow
def test_outputs_have_the_inputs_sizes_and_a_rerun_resumes(run, tmp_path):
    write_images(tmp_path / "in", SIZES)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG not really")  # sorts first
    out = tmp_path / "out"
    first = predict.predict(run, tmp_path / "in", out, keep_going=True)
    assert len(first.written) == len(SIZES) and not first.finished
    assert list(first.skipped) == ["broken"] and "broken.png" in first.skipped["broken"]
    before = {}
    for i, size in enumerate(SIZES):
        got = _outputs(out, f"case_{i}")
        assert got["mask"].shape == got["probs"].shape == got["uncertainty"].shape == size
        assert set(np.unique(got["mask"])) <= {0, 255}
        assert got["probs"].min() >= 0.0 and got["probs"].max() <= 1.0
        assert got["uncertainty"].min() >= 0.0 and got["uncertainty"].max() <= 1.0  # bits
        before[i] = got
    with open(out / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["height"]), int(r["width"])) for r in rows] == SIZES
    for i, r in enumerate(rows):
        assert float(r["pixels_foreground"]) == np.sum(before[i]["mask"] > 0)
        assert float(r["entropy_mean"]) == pytest.approx(before[i]["uncertainty"].mean(), 1e-4)

    # An interrupted run: case 1 never finished (no summary; a half-written file), case 3 lost
    # its mask. Finished cases are not touched; the others get what one run gives them (the
    # skipped input keeps its place, so theirs do not move).
    (out / "case_1.json").unlink()
    (out / "case_1_probs.npy.part").write_bytes(b"half")
    (out / "case_3_mask.png").unlink()
    stamp = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    second = predict.predict(run, tmp_path / "in", out, keep_going=True)
    assert sorted(second.written) == ["case_1", "case_3"] and list(second.skipped) == ["broken"]
    assert sorted(second.finished) == ["case_0", "case_2", "case_4"]
    for path, ns in stamp.items():
        if path.name.startswith(("case_0", "case_2", "case_4")):
            assert path.stat().st_mtime_ns == ns, path
    for i in (1, 3):
        for name, array in _outputs(out, f"case_{i}").items():
            np.testing.assert_array_equal(array, before[i][name], err_msg=f"case_{i} {name}")
    assert not list(out.glob("*.part.*")) and len(list(out.glob("*.json"))) == len(SIZES)


def test_an_unreadable_input_is_named_and_keep_going_lists_it(run, tmp_path, capsys):
    write_images(tmp_path / "in", SIZES[:1])
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(predict.PredictError, match=r"case broken: .*broken\.png"):
        predict.predict(run, tmp_path / "in", tmp_path / "out")
    (tmp_path / "in" / "case_0.png").unlink()
    argv = ["predict", f"--workdir={run}", f"--input={tmp_path / 'in'}",
            f"--output={tmp_path / 'out'}", "--keep_going"]
    assert cli_main.dispatch(argv) == 1
    err = capsys.readouterr().err
    assert "skipped broken:" in err and "broken.png" in err and "1 case(s) skipped" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cases.csv"]
    argv[3] = f"--output={tmp_path / 'in' / 'masks'}"
    assert cli_main.dispatch(argv) == 1
    assert "inside --input" in capsys.readouterr().err


def test_a_feedforward_segformer_run_predicts(tmp_path):
    workdir = tmp_path / "segformer"
    write_run(workdir, predict_config(tmp_path / "data", mode="feedforward", arch="segformer"))
    write_images(tmp_path / "in", [(16, 16), (16, 16)])
    summary = predict.predict(workdir, tmp_path / "in", tmp_path / "out")
    assert len(summary.written) == 2
    for i in range(2):
        got = _outputs(tmp_path / "out", f"case_{i}")
        p = got["probs"].astype(np.float64)
        # One member: the mask thresholds the sigmoid, the entropy is its binary entropy.
        np.testing.assert_array_equal(got["mask"] > 0, p > 0.5)
        q = np.clip(p, 1e-12, 1 - 1e-12)
        np.testing.assert_allclose(got["uncertainty"], -(q * np.log2(q) + (1 - q) * np.log2(1 - q)),
                                   atol=1e-5)
