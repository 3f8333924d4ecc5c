"""Several annotators per image: simulated raters of the synthetic data, rater files of the
folder and nnU-Net builders, and the pipeline's choice of training target and eval reference."""

import zlib

import nibabel as nib
import numpy as np
import pytest
from data_fixtures import config, encode, write_folder
from PIL import Image
from volume_fixtures import save, write_decathlon, write_nnunet

from jdiffseg.config import schema
from jdiffseg.data import DataError, build_dataset, make_loader, procedural, raters
from jdiffseg.data.registry import make_builder
from jdiffseg.evaluation.evaluate import test_batches as evaluate_batches

N, R, SIZE = 12, 4, 32


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * (a & b).sum() / total


def _pairwise(stack: np.ndarray) -> float:
    s = stack.astype(bool)
    return float(np.mean([_dice(s[i], s[j]) for i in range(len(s)) for j in range(i + 1, len(s))]))


def _records(cfg, split="train"):
    b = make_builder(cfg.data)
    return list(b.as_data_source(split))


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    c = config(tmp_path_factory.mktemp("raters"), variant="lesion", image_size=SIZE,
               num_train_examples=N, num_val_examples=4, num_test_examples=4, batch_size=4,
               eval_batch_size=4, raters=R, rater_strength=0.8)
    c.data.augment.update(flip=False, rot90=False)  # the drawn rater stays recognisable
    build_dataset(c)
    return c


def test_one_rater_leaves_the_synthetic_data_unchanged(tmp_path):
    # fixed values of the generator (as before raters existed), and the stored examples
    image, mask = procedural.generate("lesion", 16, 0, "train", 0)
    assert (zlib.crc32(image.tobytes()), zlib.crc32(mask.tobytes())) == (3246103374, 2307683211)
    names = set()
    for raters_value in (0, 1):
        c = config(tmp_path / str(raters_value), variant="lesion", image_size=16,
                   num_train_examples=3, num_val_examples=1, num_test_examples=1,
                   raters=raters_value, rater_strength=0.9)
        build_dataset(c)
        names.add(make_builder(c.data).builder_config.name)
        for ex in _records(c):
            assert "raters" not in ex
            i = int(ex["id"].decode().rsplit("_", 1)[1])
            image, mask = procedural.generate("lesion", 16, 0, "train", i)
            np.testing.assert_array_equal(ex["image"], image)
            np.testing.assert_array_equal(ex["mask"][..., 0], mask)
    assert names == {"lesion_16px_n3-1-1"}


def test_synthetic_raters_are_stored_deterministic_and_differ(multi, tmp_path):
    assert make_builder(multi.data).builder_config.name.endswith("_raters4_strength0.8")
    first = _records(multi)
    again = config(tmp_path, **{k: multi.data[k] for k in (
        "variant", "image_size", "num_train_examples", "num_val_examples", "num_test_examples",
        "raters", "rater_strength")})
    build_dataset(again)
    for a, b in zip(first, _records(again), strict=True):
        assert a["raters"].shape == (R, SIZE, SIZE, 1) and a["raters"].dtype == np.uint8
        np.testing.assert_array_equal(a["raters"], b["raters"])
        np.testing.assert_array_equal(a["mask"], raters.majority(a["raters"]))
        assert len({r.tobytes() for r in a["raters"]}) > 1


@pytest.mark.parametrize("variant", procedural.VARIANTS)
def test_strength_lowers_agreement_and_each_rater_keeps_a_style(variant):
    exact = [procedural.generate(variant, SIZE, 0, "train", i)[1] for i in range(8)]
    agreement = []
    for strength in (0.0, 0.3, 1.0):
        drawn = [procedural.annotators(m, R, strength, 0, variant, "train", i)
                 for i, m in enumerate(exact)]
        agreement.append(np.mean([_pairwise(d) for d in drawn]))
        if strength == 0.0:
            assert all((d == m).all() for d, m in zip(drawn, exact, strict=True))
    assert agreement[0] == 1.0 > agreement[1] > agreement[2]
    biases = [procedural.rater_style(0, r).bias for r in range(R)]
    wide, narrow = int(np.argmax(biases)), int(np.argmin(biases))
    assert biases[wide] > 1.0 and biases[narrow] < -0.5  # seed 0: a dilating and an eroding one
    drawn = [procedural.annotators(m, R, 0.6, 0, variant, "train", i)
             for i, m in enumerate(exact)]
    assert sum(d[wide].sum() > m.sum() for d, m in zip(drawn, exact, strict=True)) >= 7
    assert sum(d[narrow].sum() < d[wide].sum() for d in drawn) >= 7


def test_multiclass_synthetic_raters_and_bad_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="multi-class variant 'organs'"):
        make_builder(config(tmp_path, variant="organs", num_classes=3, raters=3).data)
    with pytest.raises(ValueError, match=r"config.data.rater_strength=1.5"):
        make_builder(config(tmp_path, raters=3, rater_strength=1.5).data)
    with pytest.raises(ValueError, match=r"config.data.raters=3: dataset 'isic2016'"):
        make_builder(config(tmp_path, "isic2016", raters=3).data)
    c = config(tmp_path, train_rater="bogus")
    with pytest.raises(ValueError, match=r"config.data.train_rater='bogus'"):
        schema.rater_choice(c, "data.train_rater")
    c.eval = schema.base_config().eval
    for value, want in (("majority", "majority"), ("all", "all"), ("rater2", 2), ("1", 1)):
        c.eval.reference = value
        assert schema.rater_choice(c, "eval.reference") == want
    c.eval.reference = "random"
    with pytest.raises(ValueError, match=r"config.eval.reference='random'"):
        schema.rater_choice(c, "eval.reference")


def _rater_of(mask: np.ndarray, stored: np.ndarray) -> int:
    hits = [k for k in range(len(stored)) if np.array_equal(mask, stored[k])]
    assert hits, "the training mask is none of the example's raters"
    return hits[0]


def test_training_draws_a_rater_per_step_deterministically(multi):
    stored = {i: ex["raters"].astype(np.float32) for i, ex in enumerate(_records(multi))}

    def draws(seed):
        it = iter(make_loader(multi, "train", train=True, seed=seed, shard=(0, 1)))
        out: dict[int, list[int]] = {}
        for _ in range(3 * N // 4):  # three epochs
            batch = next(it)
            for index, mask in zip(batch["index"], batch["mask"], strict=True):
                out.setdefault(int(index), []).append(_rater_of(mask, stored[int(index)]))
        return out

    first = draws(0)
    assert first == draws(0)
    assert sum(len(set(v)) > 1 for v in first.values()) >= N // 2
    assert {k for v in first.values() for k in v} == set(range(R))

    records = _records(multi)
    for choice in ("majority", "2"):
        multi.data.train_rater = choice
        batch = next(iter(make_loader(multi, "train", train=True, seed=0, shard=(0, 1))))
        for index, mask in zip(batch["index"], batch["mask"], strict=True):
            rec = records[int(index)]
            want = rec["mask"] if choice == "majority" else rec["raters"][2]
            np.testing.assert_array_equal(mask, want)
    multi.data.train_rater = "7"
    with pytest.raises(ValueError, match=r"config.data.train_rater=7.*has 4 raters"):
        make_loader(multi, "train", train=True, seed=0, shard=(0, 1))
    multi.data.train_rater = "random"


def test_eval_reference_chooses_the_mask_and_all_delivers_the_raters(multi):
    c = schema.base_config()
    c.data = multi.data
    c.eval.update(split="validation", reference="all")
    records = _records(multi, "validation")
    batches, wanted = evaluate_batches(c, 4)
    batch = next(batches)
    assert wanted == 4 and batch["raters"].shape == (4, R, SIZE, SIZE, 1)
    for index, mask, drawn in zip(batch["index"], batch["mask"], batch["raters"], strict=True):
        np.testing.assert_array_equal(drawn, records[index]["raters"])
        np.testing.assert_array_equal(mask, records[index]["mask"])
    c.eval.reference = "rater1"
    batch = next(iter(make_loader(c, "validation", train=False, seed=0, shard=(0, 1))))
    assert "raters" not in batch
    for index, mask in zip(batch["index"], batch["mask"], strict=True):
        np.testing.assert_array_equal(mask, records[index]["raters"][1])


def test_single_rater_data_refuses_a_rater_reference(tmp_path):
    c = config(tmp_path, image_size=16, num_train_examples=4, num_val_examples=2,
               num_test_examples=1, batch_size=2, eval_batch_size=2)
    c.eval = schema.base_config().eval
    c.eval.reference = "all"
    with pytest.raises(ValueError, match=r"config.eval.reference='all'.*one mask per image"):
        make_loader(c, "validation", train=False, seed=0, shard=(0, 1))


# ---- folder: masks/<name>_rater<k>.<ext> ----


def _folder_raters(root, n=5, count=3, size=24):
    """A folder dataset whose plain masks are replaced by `count` shifted copies each."""
    write_folder(root, n=n, size=size)
    for path in sorted((root / "masks").glob("*.png")):
        mask = np.asarray(Image.open(path))
        for k in range(count):
            shifted = np.roll(mask, k - 1, axis=1)
            (root / "masks" / f"{path.stem}_rater{k}.png").write_bytes(encode(shifted, "PNG"))
        path.unlink()
    return root


def test_folder_reads_raters(tmp_path):
    root = _folder_raters(tmp_path / "m")
    c = config(tmp_path, "folder", manual_dir=str(root), image_size=24, raters=3,
               test_fraction=0.2, val_fraction=0.2)
    build_dataset(c)
    ex = _records(c)[0]
    assert ex["raters"].shape == (3, 24, 24, 1)
    assert not np.array_equal(ex["raters"][0], ex["raters"][2])
    np.testing.assert_array_equal(ex["mask"], ex["raters"][1])  # the middle one is the majority


@pytest.mark.parametrize("fault", ["missing", "extra", "size", "unset"])
def test_folder_bad_raters_name_the_file(tmp_path, fault):
    root = _folder_raters(tmp_path / "m")
    bad = root / "masks" / "case02_rater1.png"
    if fault == "missing":
        bad.unlink()
        match = r"missing rater 1 of .*case02.*expected .*masks/case02_rater1\.png"
    elif fault == "extra":
        bad = root / "masks" / "case02_rater3.png"
        bad.write_bytes((root / "masks" / "case02_rater1.png").read_bytes())
        match = r"case02_rater3\.png is rater 3 .* config.data.raters=3"
    elif fault == "size":
        bad.write_bytes(encode(np.zeros((20, 24), np.uint8), "PNG"))
        match = r"mask .*case02_rater1\.png is 24x20"
    else:
        match = r"no mask for .*case00.*rater masks case00_rater0 .* set config.data.raters"
    c = config(tmp_path, "folder", manual_dir=str(root), image_size=24,
               raters=0 if fault == "unset" else 3)
    with pytest.raises(DataError, match=match):
        build_dataset(c)
    assert not make_builder(c.data).is_prepared()


# ---- nnU-Net: labelsTr/<case>_rater<k>.nii.gz ----


def _nnunet_raters(root, count=3):
    """A one-channel nnU-Net dataset whose label maps become `count` raters' (shifted boxes)."""
    folder = write_nnunet(root, n=4, channel_names=("T2",))
    for path in sorted((folder / "labelsTr").glob("*.nii.gz")):
        labels = np.asarray(nib.load(path).dataobj)
        case = path.name[: -len(".nii.gz")]
        for k in range(count):
            save(path.parent / f"{case}_rater{k}.nii.gz", np.roll(labels, k - 1, axis=0))
        path.unlink()
    return folder


def test_nnunet_reads_raters(tmp_path):
    folder = _nnunet_raters(tmp_path / "m")
    c = config(tmp_path, "nnunet", manual_dir=str(folder), image_size=8, raters=3,
               crop_nonzero=False)
    build_dataset(c)
    examples = _records(c)
    assert examples[0]["raters"].shape == (3, 8, 8, 1)
    assert any(not np.array_equal(ex["raters"][0], ex["raters"][2]) for ex in examples)
    for ex in examples:  # binary target: the majority is the middle rater
        np.testing.assert_array_equal(ex["mask"], ex["raters"][1])


@pytest.mark.parametrize("fault", ["missing", "extra", "shape", "unset"])
def test_nnunet_bad_raters_name_the_file(tmp_path, fault):
    folder = _nnunet_raters(tmp_path / "m")
    bad = folder / "labelsTr" / "toy_001_rater2.nii.gz"
    if fault == "missing":
        bad.unlink()
        match = r"missing rater 2 of case toy_001: expected .*labelsTr/toy_001_rater2\.nii\.gz"
    elif fault == "extra":
        bad = folder / "labelsTr" / "toy_001_rater3.nii.gz"
        save(bad, np.zeros((8, 12, 6), np.int16))
        match = r"toy_001_rater3\.nii\.gz is rater 3 of case toy_001"
    elif fault == "shape":
        save(bad, np.zeros((8, 12, 5), np.int16))
        match = r"toy_001_rater2\.nii\.gz"
    else:
        match = r"toy_000_rater0\.nii\.gz looks like rater 0 of case toy_000: set config.data"
    c = config(tmp_path, "nnunet", manual_dir=str(folder), image_size=8,
               raters=0 if fault == "unset" else 3)
    with pytest.raises(DataError, match=match):
        build_dataset(c)


def test_decathlon_case_listed_without_its_rater_file(tmp_path):
    folder = write_decathlon(tmp_path / "m", n=3)
    for path in sorted((folder / "labelsTr").glob("toy_*.nii.gz")):
        path.rename(path.parent / path.name.replace(".nii.gz", "_rater0.nii.gz"))
    c = config(tmp_path, "nnunet", manual_dir=str(folder), image_size=8, raters=2)
    with pytest.raises(DataError, match=r"missing rater 1 of case toy_0: expected "
                                        r".*labelsTr/toy_0_rater1\.nii\.gz"):
        build_dataset(c)
