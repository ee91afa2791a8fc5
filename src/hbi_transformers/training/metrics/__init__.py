"""Metrics: text-video retrieval (also as an `evaluate` module) and video question answering."""
