"""Shared run infrastructure: the run directory, checkpoints, sharding, logging, CPU settings."""
