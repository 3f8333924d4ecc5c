"""SegFormer as E1 end to end: started from a local pretrained encoder, trained, evaluated."""

from __future__ import annotations

import numpy as np
from segformer_support import write_checkpoint
from train_support import tiny_config

from jdiffseg.evaluation import evaluate
from jdiffseg.runtime import checkpoint
from jdiffseg.training import train


def test_trains_from_a_pretrained_encoder_and_evaluates(tmp_path, capfd):
    pretrained = tmp_path / "mit-tiny"
    state = write_checkpoint(pretrained, classes=None)  # an encoder checkpoint, as mit-b*
    config = tiny_config(tmp_path / "data", mode="feedforward", arch="segformer", steps=2)
    config.model.pretrained = str(pretrained)
    config.train.lr = 0.0  # the weights stay those loaded
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    assert "the decode head keeps its initialisation" in capfd.readouterr().err

    variables, meta = checkpoint.load_variables(str(workdir), "latest", use_ema=False)
    assert meta["step"] == 2
    encoder = variables["params"]["encoder"]
    np.testing.assert_array_equal(
        encoder["layer_norm_1"]["scale"], state["segformer.encoder.layer_norm.1.weight"]
    )
    np.testing.assert_array_equal(
        encoder["block_2_0"]["attention"]["query"]["kernel"],
        state["segformer.encoder.block.2.0.attention.self.query.weight"].T,
    )
    metrics = evaluate.evaluate(workdir)
    assert 0.0 <= metrics["summary"]["dice"]["mean"] <= 1.0
