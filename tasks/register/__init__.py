"""Tracking and registry: MLflow runs for each trained expert and a registered model version."""
