"""PNG figures: files exist, are non-blank and have the documented pixel size."""

import numpy as np
import pytest
from PIL import Image

from jdiffseg.evaluation import figures
from jdiffseg.scoring import metrics


def _open(path):
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 0  # something was drawn
    return arr


def test_reliability_diagram(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.uniform(size=(2, 16, 16, 1)).astype(np.float32)
    labels = (rng.uniform(size=probs.shape) < probs).astype(np.float32)
    state = metrics.update(metrics.init(10), probs, labels)
    path = figures.reliability_diagram(state, tmp_path / "sub" / "rel.png", title="test", dpi=50)
    assert _open(path).shape == (250, 400, 3)  # (1.25 * 4 in, 2 * 4 in) at 50 dpi
    one = figures.reliability_diagram(state, tmp_path / "fg.png", variants=("foreground",),
                                      panel_inches=2.0, dpi=40)
    assert _open(one).shape == (100, 80, 3)


def test_case_grid(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, size=(3, 16, 16, 3)).astype(np.float32)
    labels = (rng.uniform(size=(3, 16, 16, 1)) > 0.5).astype(np.float32)
    members = (rng.uniform(size=(3, 5, 16, 16, 1)) > 0.5).astype(np.float32)
    fused = members.mean(axis=1) > 0.5
    unc = members.var(axis=1)
    path = figures.case_grid(tmp_path / "cases.png", images, labels, members, fused, unc,
                             ids=["a", "b", "c"], max_cases=2, cell_inches=1.0, dpi=40)
    # 2 cases; columns: image, truth, 5 members, fused, uncertainty = 9
    assert _open(path).shape == (80, 360, 3)
    no_unc = figures.case_grid(tmp_path / "cases2.png", images, labels, members, fused,
                               cell_inches=1.0, dpi=20)
    assert _open(no_unc).shape == (60, 160, 3)
    with pytest.raises(ValueError, match="labels has batch 2"):
        figures.case_grid(tmp_path / "bad.png", images, labels[:2], members, fused)


def test_overlay_grid(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 255, size=(5, 12, 12, 3), dtype=np.uint8)
    masks = (rng.uniform(size=(5, 12, 12, 1)) > 0.5).astype(np.float32)
    path = figures.overlay_grid(tmp_path / "show.png", images, masks, ncols=4, dpi=30)
    assert _open(path).shape == (120, 240, 3)  # 2 rows x 4 columns of 2-inch cells


def test_overlay_mask_blends_only_masked_pixels():
    image = np.zeros((4, 4, 3), np.float32)  # mid-grey in [-1, 1]
    mask = np.zeros((4, 4, 1), np.float32)
    mask[1, 2] = 1.0
    out = figures.overlay_mask(image, mask, color=(1.0, 0.0, 0.0), alpha=0.5)
    np.testing.assert_allclose(out[1, 2], [0.75, 0.25, 0.25])
    np.testing.assert_allclose(out[0, 0], [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="does not match"):
        figures.overlay_mask(image, np.zeros((3, 4)))


def test_to_display_handles_dtypes_and_channels():
    np.testing.assert_allclose(figures.to_display(np.full((2, 2, 3), 255, np.uint8)), 1.0)
    grey = figures.to_display(np.full((2, 2, 1), -1.0, np.float32))
    assert grey.shape == (2, 2, 3) and np.all(grey == 0.0)
    four = figures.to_display(np.ones((2, 2, 4), np.float32), value_range=(0.0, 2.0))
    np.testing.assert_allclose(four, 0.5)
