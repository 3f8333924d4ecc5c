"""Scoring shared by validation and evaluation: metrics, fusion, statistics, predictors."""
