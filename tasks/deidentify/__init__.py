"""De-identification: Presidio analysis with clinical recognizers, then consistent surrogates."""
