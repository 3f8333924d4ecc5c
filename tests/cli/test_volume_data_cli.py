"""`jdiffseg data build|show` on the NIfTI layouts: nnU-Net v2, Decathlon and BraTS."""

import numpy as np
from PIL import Image
from volume_fixtures import SHAPE, write_brats, write_decathlon, write_nnunet

from jdiffseg.cli.data import main as data_main


def test_build_each_layout_then_show_slices(tmp_path, capsys):
    write_nnunet(tmp_path / "nnunet", n=3)
    write_decathlon(tmp_path / "msd", n=3)
    write_brats(tmp_path / "brats", n=3)
    n = SHAPE[2]  # one case per split, every slice kept
    names = ["nnunet/custom_16px_lesion", "nnunet/msd_16px", "brats/custom_16px_classes"]
    runs = (
        ("nnunet", "nnunet", ["--target=lesion"]),
        ("nnunet", "msd", ["--variant=msd"]),
        ("brats", "brats", ["--target=classes"]),  # a label map: 3 tumour classes
    )
    for (name, manual, extra), stored in zip(runs, names, strict=True):
        argv = [
            "build",
            name,
            "--image_size=16",
            f"--data_dir={tmp_path / 'd'}",
            f"--manual_dir={tmp_path / manual}",
            *extra,
        ]
        assert data_main(argv) == 0, capsys.readouterr()
        out = capsys.readouterr().out
        assert f"{stored} ready" in out
        assert f"{{'train': {n}, 'validation': {n}, 'test': {n}}}" in out, out
    png = tmp_path / "brats.png"
    assert (
        data_main(
            [
                "show",
                "brats",
                "--image_size=16",
                f"--data_dir={tmp_path / 'd'}",
                "--target=classes",
                "--split=test",
                "--num=4",
                f"--out={png}",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    grid = np.asarray(Image.open(png).convert("RGB"))
    assert grid.shape[:2] == (200, 4 * 200)
    overlay = (grid[..., 0] > 200) & (grid[..., 2] < 120)  # the mask's overlay colour
    assert overlay.any()


def test_volumetric_errors_are_reported(tmp_path, capsys):
    write_brats(tmp_path / "brats", n=2)
    argv = [
        "build",
        "brats",
        "--image_size=16",
        f"--data_dir={tmp_path / 'd'}",
        f"--manual_dir={tmp_path / 'brats'}",
        "--target=liver",
    ]
    assert data_main(argv) == 1
    out = capsys.readouterr().out
    assert "target 'liver' is not 'foreground', 'classes', a class or a region" in out
