"""The grain pipeline: batches, augmentation alignment, resumable state, sharding, eval padding."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from data_fixtures import config

from jdiffseg.data import build_dataset, make_loader
from jdiffseg.data.augment import AugmentConfig, augment, color_jitter
from jdiffseg.data.pipeline import eval_indices

N_TRAIN, N_VAL = 40, 10


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    c = config(tmp_path_factory.mktemp("pipe"), variant="lesion", image_size=16,
               num_train_examples=N_TRAIN, num_val_examples=N_VAL, num_test_examples=4,
               batch_size=8, eval_batch_size=6)
    c.data.augment.update(crop_scale=0.5, color_jitter=0.2)
    build_dataset(c)
    return c


def _take(loader, n, it=None):
    it = iter(loader) if it is None else it
    return [next(it) for _ in range(n)]


def test_training_batches(cfg):
    batch = _take(make_loader(cfg, "train", train=True, seed=0, shard=(0, 1)), 1)[0]
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["mask"].shape == (8, 16, 16, 1) and batch["mask"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
    assert batch["valid"].tolist() == [1.0] * 8 and batch["index"].dtype == np.int32


def test_geometry_is_identical_for_image_and_mask():
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(flip=True, rot90=True, crop_scale=0.3, color_jitter=0.0)
    changed = 0
    for seed in range(40):
        mask = np.zeros((24, 24, 1), np.uint8)
        mask[rng.integers(0, 12):rng.integers(12, 24), rng.integers(0, 8):rng.integers(8, 24)] = 1
        image = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        image[..., 0] = mask[..., 0] * 255  # the mask, drawn into the image
        out_image, out_mask = augment(image, mask, np.random.default_rng(seed), cfg)
        assert out_mask.shape == (24, 24, 1) and set(np.unique(out_mask)) <= {0, 1}
        np.testing.assert_array_equal(out_image[..., 0] >= 128, out_mask[..., 0] == 1)
        changed += not np.array_equal(out_mask, mask)
    assert changed >= 30


def test_flips_and_rotations_are_exact_permutations():
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mask = (image[..., :1] > 127).astype(np.uint8)
    cfg = AugmentConfig(flip=True, rot90=True, crop_scale=1.0, color_jitter=0.0)
    for seed in range(8):
        out, m = augment(image, mask, np.random.default_rng(seed), cfg)
        assert sorted(out.reshape(-1, 3).tolist()) == sorted(image.reshape(-1, 3).tolist())
        np.testing.assert_array_equal(m[..., 0], out[..., 0] > 127)


def test_color_jitter_changes_only_colour():
    image = np.random.default_rng(2).uniform(0, 255, (8, 8, 3)).astype(np.float32)
    out = color_jitter(image, np.random.default_rng(0), 0.4)
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, image)
    np.testing.assert_allclose(color_jitter(image, np.random.default_rng(0), 0.0), image,
                               atol=1e-3)


def test_resume_from_saved_state_gives_the_same_batches(cfg):
    it = iter(make_loader(cfg, "train", train=True, seed=3, shard=(0, 1)))
    _take(None, 4, it)  # 5 batches per epoch: the next ones cross the epoch boundary
    state = it.get_state()
    expected = _take(None, 3, it)
    resumed = iter(make_loader(cfg, "train", train=True, seed=3, shard=(0, 1)))
    resumed.set_state(state)
    for a, b in zip(expected, _take(None, 3, resumed), strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_shuffling_is_seeded_and_changes_every_epoch(cfg):
    def order(seed):
        batches = _take(make_loader(cfg, "train", train=True, seed=seed, shard=(0, 1)), 10)
        return np.concatenate([b["index"] for b in batches])
    a, b = order(0), order(1)
    np.testing.assert_array_equal(a, order(0))
    assert not np.array_equal(a, b)
    assert sorted(a[:N_TRAIN]) == list(range(N_TRAIN)) == sorted(a[N_TRAIN:])
    assert not np.array_equal(a[:N_TRAIN], a[N_TRAIN:])


def test_process_shards_are_disjoint_and_cover_the_data(cfg):
    per_epoch = N_TRAIN // 8
    seen = []
    for index in range(2):
        batches = _take(make_loader(cfg, "train", train=True, seed=0, shard=(index, 2)), per_epoch)
        assert batches[0]["image"].shape[0] == 4  # per-process share of the global batch of 8
        seen.append(set(np.concatenate([b["index"] for b in batches]).tolist()))
    assert len(seen[0]) == len(seen[1]) == N_TRAIN // 2
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(N_TRAIN))


def test_eval_covers_each_example_once_with_equal_steps(cfg):
    source = build_dataset(cfg).as_data_source("validation")
    steps, seen = set(), []
    for index in range(3):  # 10 examples over 3 processes with 2 per process batch
        batches = list(make_loader(cfg, "validation", train=False, seed=0, shard=(index, 3)))
        steps.add(len(batches))
        for b in batches:
            for row in range(len(b["index"])):
                i = int(b["index"][row])
                if b["valid"][row] == 0:
                    assert i == -1 and not b["mask"][row].any()
                    assert (b["image"][row] == -1.0).all()  # black padding
                    continue
                seen.append(i)
                np.testing.assert_allclose(b["image"][row],
                                           source[i]["image"] / 127.5 - 1.0, atol=1e-6)
                np.testing.assert_array_equal(b["mask"][row], source[i]["mask"])
    assert steps == {2} and sorted(seen) == list(range(N_VAL))


def test_eval_indices_padding():
    assert eval_indices(5, (0, 2), 2).tolist() == [0, 1, 2, -1]
    assert eval_indices(5, (1, 2), 2).tolist() == [3, 4, -1, -1]
    assert eval_indices(1, (1, 2), 4).tolist() == [-1, -1, -1, -1]


def test_batch_must_divide_over_processes(cfg):
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        make_loader(cfg, "train", train=True, seed=0, shard=(0, 3))


@pytest.mark.slow
def test_worker_processes_give_the_same_examples_and_resume(cfg):
    cfg = cfg.copy_and_resolve_references()
    local = _take(make_loader(cfg, "train", train=True, seed=5, shard=(0, 1)), 4)
    cfg.data.num_workers = 2
    it = iter(make_loader(cfg, "train", train=True, seed=5, shard=(0, 1)))
    first = _take(None, 2, it)
    state = it.get_state()
    rest = _take(None, 2, it)
    # workers batch their own slices of the sampled order, so batches are composed differently,
    # but every record comes with the same augmentation (its RNG depends on the record only)
    by_index = {int(i): x for b in local for i, x in zip(b["index"], b["image"], strict=True)}
    seen = [(int(i), x) for b in first + rest for i, x in zip(b["index"], b["image"], strict=True)]
    assert sorted(i for i, _ in seen) == sorted(by_index)
    for i, image in seen:
        np.testing.assert_array_equal(image, by_index[i])
    resumed = iter(make_loader(cfg, "train", train=True, seed=5, shard=(0, 1)))
    resumed.set_state(state)
    for a, b in zip(rest, _take(None, 2, resumed), strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_to_global_shards_the_batch_over_devices():
    script = textwrap.dedent("""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import jax
        import numpy as np
        from jax.sharding import Mesh
        from jdiffseg.data import to_global
        mesh = Mesh(np.array(jax.devices()), ("data",))
        batch = {"image": np.arange(8 * 2 * 2 * 3, dtype=np.float32).reshape(8, 2, 2, 3),
                 "valid": np.ones(8, np.float32)}
        out = to_global(batch, mesh)
        assert out["image"].shape == (8, 2, 2, 3)
        shards = out["image"].addressable_shards
        assert len(shards) == 4 and all(s.data.shape == (2, 2, 2, 3) for s in shards)
        np.testing.assert_array_equal(np.asarray(out["image"]), batch["image"])
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
