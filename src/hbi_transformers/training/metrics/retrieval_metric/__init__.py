"""Holds the `evaluate` script `retrieval_metric.py`; being a package makes setuptools ship it.

Load it with `hbi_transformers.metrics.load_retrieval_metric()`, not by importing it.
"""
