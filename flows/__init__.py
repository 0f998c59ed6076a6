"""Prefect flows: one per stage, the parent pipeline, and the `medlora` CLI."""
