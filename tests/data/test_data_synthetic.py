"""The procedural default dataset: statistics, determinism, TFDS build, no TensorFlow."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import config

from jdiffseg.data import build_dataset, make_builder, procedural

REPO = Path(__file__).resolve().parents[2]

LUMA = np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("variant", procedural.VARIANTS)
def test_foreground_fraction_in_range_and_image_informs_mask(variant):
    lo, hi = procedural.FG_RANGE[variant]
    darker = 0
    for i in range(30):
        image, mask = procedural.generate(variant, 64, 0, "train", i)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 1}
        assert lo <= mask.mean() <= hi, (variant, i, mask.mean())
        luma = image @ LUMA
        darker += luma[mask == 1].mean() < luma[mask == 0].mean() - 5
    assert darker >= 27  # the stained / pigmented foreground is darker, in most images clearly


def test_nuclei_are_many_small_objects_and_lesion_is_one_blob():
    _, nuclei = procedural.generate("nuclei", 64, 0, "train", 0)
    _, lesion = procedural.generate("lesion", 64, 0, "train", 0)
    # boundary length per foreground pixel: many small objects have far more boundary
    def edge_ratio(m):
        m = m.astype(bool)
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        return edge.sum() / m.sum()
    assert edge_ratio(nuclei) > 2 * edge_ratio(lesion)


def test_generation_is_deterministic_and_per_example():
    a = procedural.generate("tissue", 32, 3, "test", 5)
    b = procedural.generate("tissue", 32, 3, "test", 5)
    c = procedural.generate("tissue", 32, 3, "test", 6)
    d = procedural.generate("tissue", 32, 4, "test", 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], d[0])


def test_builder_builds_and_reads(tmp_path):
    cfg = config(tmp_path, variant="nuclei", image_size=32, num_train_examples=12,
                 num_val_examples=4, num_test_examples=5, seed=7)
    builder = build_dataset(cfg)
    sources = builder.as_data_source()
    assert {k: len(v) for k, v in sources.items()} == {"train": 12, "validation": 4, "test": 5}
    ex = sources["test"][0]
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert ex["mask"].shape == (32, 32, 1) and set(np.unique(ex["mask"])) <= {0, 1}
    idx = int(ex["id"].decode().split("_")[1])
    image, mask = procedural.generate("nuclei", 32, 7, "test", idx)
    np.testing.assert_array_equal(ex["image"], image)
    np.testing.assert_array_equal(ex["mask"][..., 0], mask)
    assert builder.builder_config.name == "nuclei_32px_n12-4-5_seed7"
    assert make_builder(cfg.data).is_prepared()  # a second build is a no-op


def test_failed_build_leaves_nothing_that_reads_as_complete(tmp_path, monkeypatch):
    cfg = config(tmp_path, image_size=16, num_train_examples=6, num_val_examples=2,
                 num_test_examples=2)
    real = procedural.generate

    def failing(variant, size, seed, split, index):
        if split == "validation":
            raise RuntimeError("disk full")
        return real(variant, size, seed, split, index)

    monkeypatch.setattr(procedural, "generate", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        build_dataset(cfg)
    builder = make_builder(cfg.data)
    assert not builder.is_prepared()
    assert not os.path.exists(builder.data_dir)
    monkeypatch.setattr(procedural, "generate", real)
    assert len(build_dataset(cfg).as_data_source("validation")) == 2


_CONCURRENT_BUILD = """
import sys
sys.path.insert(0, "tests")
from data_fixtures import config
from jdiffseg.data import build_dataset
from pathlib import Path
cfg = config(Path(sys.argv[1]), image_size=16, num_train_examples=24, num_val_examples=4,
             num_test_examples=4)
print(len(build_dataset(cfg).as_data_source("train")))
"""


def test_concurrent_builds_of_one_dataset_all_succeed(tmp_path):
    # The processes of a multi-host job build the same dataset in one data_dir at once.
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_BUILD, str(tmp_path)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert out.split()[-1] == "24"
    built = (tmp_path / "tfds" / "synthetic").glob("*/*")
    assert sorted(p.name for p in built if p.is_dir()) == ["1.0.0"]  # no incomplete.* left


def test_builds_and_reads_without_tensorflow(tmp_path):
    script = textwrap.dedent(f"""
        import importlib.machinery
        import importlib.util
        import sys

        class HideTensorflow(importlib.machinery.PathFinder):
            # The standard path finder, except that TensorFlow is never found: the process
            # behaves as if it were not installed, also on machines where it is.

            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name.partition(".")[0] == "tensorflow":
                    return None
                return super().find_spec(name, path, target)

        sys.meta_path[:] = [HideTensorflow if f is importlib.machinery.PathFinder else f
                            for f in sys.meta_path]
        try:
            import tensorflow  # noqa: F401
            raise SystemExit("tensorflow import was not blocked")
        except ImportError:
            pass
        assert importlib.util.find_spec("tensorflow") is None
        import ml_collections
        from jdiffseg.data import data_config_defaults, make_loader
        d = data_config_defaults()
        d.update(dict(data_dir={str(tmp_path)!r}, image_size=16, num_train_examples=8,
                      num_val_examples=2, num_test_examples=2, batch_size=4))
        batch = next(iter(make_loader(ml_collections.ConfigDict({{"data": d}}), "train",
                                      train=True, seed=0, shard=(0, 1))))
        assert batch["image"].shape == (4, 16, 16, 3), batch["image"].shape
        assert not [m for m in sys.modules if m.partition(".")[0] == "tensorflow"]
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK")
