"""EnsemDiff's four-channel (MRI) model trains on the BraTS fixture's
labels as three classes (tiny: one level, two steps)."""

import numpy as np
import pytest
from train_support import tiny_config
from volume_fixtures import write_brats

from jdiffseg.runtime import checkpoint, runlog
from jdiffseg.training import train


@pytest.mark.slow
def test_ensemdiff_trains_on_four_mri_channels(tmp_path):
    config = tiny_config(tmp_path / "data", steps=2)
    config.model.channel_mult = (1,)
    config.data.name, config.data.variant = "brats", "fixture"
    config.data.manual_dir = str(write_brats(tmp_path / "brats", n=4))
    config.data.target, config.data.num_classes = "classes", 3  # BraTS labels 1, 2, 4
    train.train_and_evaluate(config, str(tmp_path / "run"))
    records = runlog.read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    variables, _ = checkpoint.load_variables(str(tmp_path / "run"), "latest", use_ema=False)
    # the first convolution sees the 4 MRI channels and the noisy one-hot label map (4 classes)
    assert np.shape(variables["params"]["unet"]["input_blocks_0_0"]["kernel"]) == (3, 3, 8, 32)
