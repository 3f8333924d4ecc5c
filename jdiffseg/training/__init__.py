"""Training: the train loop and its validation, the optimiser."""
