"""Synthetic training examples for rare experts: how they are made (methods), by what (generator), the screens
they pass (filters) and the training set they join (stage)."""
