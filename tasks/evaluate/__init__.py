"""Evaluation of trained experts: automatic metrics on held-out data."""
