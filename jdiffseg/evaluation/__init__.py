"""Evaluation of a trained run: the evaluate loop, its outputs and figures, the report."""
