"""Multi-class data: the three-class synthetic flavour, folder label maps with classes.json,
and augmentation that keeps labels exact."""

import json

import numpy as np
import pytest
from data_fixtures import config, encode

from jdiffseg.data import build_dataset, make_builder, procedural
from jdiffseg.data.augment import AugmentConfig, augment
from jdiffseg.data.builders import common
from jdiffseg.data.images import DataError

LUMA = np.array([0.299, 0.587, 0.114])


def _components(m):
    """Number of 4-connected components of a boolean mask (a small flood fill)."""
    seen, count = np.zeros_like(m), 0
    for start in zip(*np.nonzero(m), strict=True):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        while stack:
            y, x = stack.pop()
            if 0 <= y < m.shape[0] and 0 <= x < m.shape[1] and m[y, x] and not seen[y, x]:
                seen[y, x] = True
                stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
    return count


def test_organs_have_three_scales_and_visibilities():
    fractions, spot_counts, organ_gap, spot_gap = [], [], [], []
    for i in range(10):
        image, labels = procedural.generate("organs", 64, 0, "train", i)
        assert labels.shape == (64, 64) and set(np.unique(labels)) == {0, 1, 2, 3}
        fractions.append([(labels == c).mean() for c in range(4)])
        spot_counts.append(_components(labels == 3))
        luma = image @ LUMA
        organ_gap.append(luma[labels == 1].mean() - luma[labels == 0].mean())
        spot_gap.append(luma[labels == 0].mean() - luma[labels == 3].mean())
    organ, core, spots = np.mean(fractions, 0)[1:]
    assert organ > 0.15 and 0.02 < core < organ / 2 and spots < 0.1
    assert min(spot_counts) >= 8  # many small objects
    # the organ is faint, the spots stand out
    assert 0 < np.mean(organ_gap) < 0.5 * np.mean(spot_gap)
    assert procedural.CLASS_NAMES["organs"] == ("background", "organ", "core", "spots")


def test_synthetic_organs_build_with_class_names(tmp_path):
    cfg = config(
        tmp_path,
        variant="organs",
        image_size=16,
        num_train_examples=4,
        num_val_examples=2,
        num_test_examples=2,
    )
    build_dataset(cfg)
    reopened = make_builder(cfg.data)  # a fresh builder reads the stored metadata
    assert common.class_names(reopened.info) == ("background", "organ", "core", "spots")
    ex = reopened.as_data_source("train")[0]
    assert ex["mask"].shape == (16, 16, 1) and ex["mask"].max() <= 3
    binary = config(
        tmp_path,
        variant="lesion",
        image_size=16,
        num_train_examples=4,
        num_val_examples=2,
        num_test_examples=2,
    )
    assert common.class_names(build_dataset(binary).info) == common.BINARY_CLASSES


def _write_label_folder(root, values=(0, 100, 200), extra_value=None, n=6, size=20):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.json").write_text(
        json.dumps({"names": ["background", "liver", "tumour"], "values": list(values)})
    )
    for i in range(n):
        labels = rng.integers(0, 3, (size, size))
        mask = np.asarray(values, np.uint8)[labels]
        if extra_value is not None and i == 3:
            mask[0, 0] = extra_value
        (root / "images" / f"c{i}.png").write_bytes(
            encode(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "PNG")
        )
        (root / "masks" / f"c{i}.png").write_bytes(encode(mask, "PNG"))
    return root


def test_folder_label_maps_with_classes_json(tmp_path):
    manual = _write_label_folder(tmp_path / "manual")
    cfg = config(
        tmp_path,
        "folder",
        variant="mc",
        image_size=16,
        manual_dir=str(manual),
        val_fraction=0.2,
        test_fraction=0.2,
    )
    builder = build_dataset(cfg)
    assert common.class_names(make_builder(cfg.data).info) == ("background", "liver", "tumour")
    seen = set()
    for split in builder.info.splits:
        for ex in builder.as_data_source(split):
            seen |= set(np.unique(ex["mask"]).tolist())
    assert seen == {0, 1, 2}  # pixel values mapped to class indices, nearest-neighbour resize


def test_folder_undeclared_value_names_file_and_values(tmp_path):
    manual = _write_label_folder(tmp_path / "manual", extra_value=77)
    cfg = config(tmp_path, "folder", variant="bad", image_size=16, manual_dir=str(manual))
    with pytest.raises(DataError, match=r"c3\.png has value\(s\) \[77\].*\[0, 100, 200\]"):
        build_dataset(cfg)
    assert not make_builder(cfg.data).is_prepared()


def test_folder_bad_classes_json(tmp_path):
    manual = _write_label_folder(tmp_path / "manual")
    (manual / "classes.json").write_text(json.dumps({"names": ["a", "b"], "values": [0, 0]}))
    cfg = config(tmp_path, "folder", variant="bad2", image_size=16, manual_dir=str(manual))
    with pytest.raises(DataError, match=r"classes\.json must be a JSON object"):
        build_dataset(cfg)


def test_augmentation_keeps_label_maps_exact_and_aligned():
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(flip=True, rot90=True, crop_scale=0.3, label_map=True)
    changed = 0
    for seed in range(20):
        labels = rng.integers(0, 4, (3, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)[..., None]
        image = np.repeat(labels * 60, 3, axis=-1).astype(np.uint8)  # the labels, drawn in
        out_image, out_labels = augment(image, labels, np.random.default_rng(seed), cfg)
        assert out_labels.dtype == np.uint8 and set(np.unique(out_labels)) <= {0, 1, 2, 3}
        # off label edges and the border (5x5 constant) the bilinear image agrees with the labels
        lab = out_labels[..., 0].astype(int)
        padded = np.pad(lab, 2, constant_values=-1)  # the crop border blends outside
        shifts = [padded[dy : dy + 24, dx : dx + 24] for dy in range(5) for dx in range(5)]
        inner = np.min(shifts, 0) == np.max(shifts, 0)
        np.testing.assert_allclose(out_image[..., 0][inner] / 60, lab[inner], atol=0.05)
        assert inner.mean() > 0.1
        changed += not np.array_equal(out_labels, labels)
    assert changed >= 15


def test_pipeline_gives_one_hot_masks_and_checks_num_classes(tmp_path):
    from jdiffseg.data.pipeline import make_loader
    from jdiffseg.diffusion.encoding import check_one_hot

    cfg = config(
        tmp_path,
        variant="organs",
        image_size=16,
        num_train_examples=4,
        num_val_examples=2,
        num_test_examples=2,
        batch_size=2,
        num_classes=3,
    )
    cfg.data.augment.crop_scale = 0.5
    batch = next(iter(make_loader(cfg, "train", train=True, seed=0, shard=(0, 1))))
    assert batch["mask"].shape == (2, 16, 16, 4)
    check_one_hot(batch["mask"], "train batch")
    cfg.data.num_classes = 1
    with pytest.raises(
        ValueError,
        match=r"num_classes=1 but dataset 'synthetic'.*"
        r"3 foreground class\(es\) \['organ', 'core', 'spots'\]",
    ):
        make_loader(cfg, "test", train=False, seed=0, shard=(0, 1))
    binary = config(
        tmp_path,
        variant="lesion",
        image_size=16,
        num_train_examples=4,
        num_val_examples=2,
        num_test_examples=2,
        num_classes=2,
    )
    with pytest.raises(ValueError, match="declares 1 foreground class"):
        make_loader(binary, "test", train=False, seed=0, shard=(0, 1))
