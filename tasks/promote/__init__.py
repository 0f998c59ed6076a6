"""The promotion gate and the registry aliases it moves."""
