"""Starting weights from a local pretrained checkpoint (``config.model.pretrained``).

Only SegFormer has published weights to start from (transformers' checkpoints of the
ImageNet-pretrained ``mit-b*`` encoders or of fine-tuned models); for the other architectures
the key must stay empty.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from jdiffseg.models.importers.segformer import load_segformer_checkpoint

PRETRAINED_ARCHS = ("segformer",)


def load_pretrained(
    model_config: Any,
    model: nn.Module,
    variables: Mapping[str, Any],
    *,
    log: Callable[[str], None] = print,
) -> Mapping[str, Any]:
    """``variables`` (initialised) with what ``model_config.pretrained`` holds loaded over them;
    unchanged when the key is empty."""
    path = model_config.get("pretrained", "")
    if not path:
        return variables
    if model_config.arch not in PRETRAINED_ARCHS:
        raise ValueError(
            f"config.model.pretrained={path!r}: starting from pretrained weights is supported "
            f"for {PRETRAINED_ARCHS}, not for model.arch={model_config.arch!r}"
        )
    return load_segformer_checkpoint(path, model, variables, log=log)
