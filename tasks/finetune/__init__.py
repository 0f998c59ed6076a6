"""Base model preparation and LoRA expert training."""
