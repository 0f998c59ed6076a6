"""Drift monitoring: the incoming de-identified notes against the champion's training notes (Evidently), and
the candidates' metrics against the champion's record; the promotion gate reads the result."""
