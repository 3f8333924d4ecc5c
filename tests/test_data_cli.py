"""`jdiffseg data build|show` as the function the command line calls."""

import numpy as np
from data_fixtures import write_folder
from PIL import Image

from jdiffseg.data.cli import data_main, overlay_grid


def test_build_then_show_writes_a_grid(tmp_path, capsys):
    common = ["synthetic", "--variant=tissue", "--image_size=16", f"--data_dir={tmp_path}",
              "--num_train_examples=8"]
    assert data_main(["build", *common]) == 0
    assert "{'train': 8, 'validation': 64, 'test': 128}" in capsys.readouterr().out
    out = tmp_path / "grid.png"
    assert data_main(["show", *common, f"--out={out}", "--num=6", "--augment"]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (18, 6 * 18, 3)


def test_build_folder_dataset_and_report_errors(tmp_path, capsys):
    manual = write_folder(tmp_path / "m", n=5)
    args = ["folder", "--variant=mine", "--image_size=16", f"--data_dir={tmp_path / 'd'}"]
    assert data_main(["build", *args, f"--manual_dir={manual}"]) == 0
    assert "folder/mine_16px ready" in capsys.readouterr().out
    assert data_main(["build", "isic2016", f"--data_dir={tmp_path / 'd'}",
                      f"--manual_dir={tmp_path / 'missing'}"]) == 1
    assert f"Manual directory {tmp_path / 'missing'} does not exist" in capsys.readouterr().out


def test_overlay_marks_mask_and_boundary():
    images = np.zeros((2, 6, 6, 3), np.uint8)
    masks = np.zeros((2, 6, 6, 1), np.float32)
    masks[0, 1:5, 1:5] = 1
    grid = overlay_grid(images, masks, columns=2)
    tile = grid[1:7, 1:7]
    assert (tile[1, 1] == (0, 255, 80)).all()  # boundary
    assert 0 < tile[2, 2, 1] < 255  # tinted interior
    assert not tile[0, 0].any() and not grid[1:7, 9:15].any()  # outside, and empty mask
