"""Serving the champion: the self-contained bundle (an MLflow model) and `medlora serve`."""
