"""Configs: the schema of every key, the experiment recipes, and parsing and overrides."""
