"""Validation gate over the de-identified corpus: GX suite, residual-PHI gate, patient-grouped split."""
