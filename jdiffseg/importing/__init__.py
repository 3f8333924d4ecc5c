"""`jdiffseg import`: a checkpoint trained with the authors' PyTorch code as a run directory
that `evaluate`, `analyze` and `predict` use as they use a trained one."""
