"""`jdiffseg data build|show` as the function the command line calls."""

import numpy as np
from data_fixtures import write_folder
from PIL import Image

from jdiffseg.cli.data import main as data_main


def test_build_then_show_writes_a_grid(tmp_path, capsys):
    common = ["synthetic", "--variant=tissue", "--image_size=16", f"--data_dir={tmp_path}",
              "--num_train_examples=8"]
    assert data_main(["build", *common]) == 0
    assert "{'train': 8, 'validation': 64, 'test': 128}" in capsys.readouterr().out
    out = tmp_path / "grid.png"
    assert data_main(["show", *common, f"--out={out}", "--num=6", "--augment"]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape[:2] == (200, 6 * 200)  # six 2-inch cells at 100 dpi, one row


def test_build_folder_dataset_and_report_errors(tmp_path, capsys):
    manual = write_folder(tmp_path / "m", n=5)
    args = ["folder", "--variant=mine", "--image_size=16", f"--data_dir={tmp_path / 'd'}"]
    assert data_main(["build", *args, f"--manual_dir={manual}"]) == 0
    assert "folder/mine_16px ready" in capsys.readouterr().out
    assert data_main(["build", "isic2016", f"--data_dir={tmp_path / 'd'}",
                      f"--manual_dir={tmp_path / 'missing'}"]) == 1
    assert f"Manual directory {tmp_path / 'missing'} does not exist" in capsys.readouterr().out
