"""The work of each medlora stage, as plain functions (Prefect wrappers live beside them)."""
