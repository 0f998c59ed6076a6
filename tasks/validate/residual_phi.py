"""Structured identifiers that must not survive de-identification.

Our surrogates come from ranges that are never issued (SSN area 9xx, the 555 exchange,
example.org, documentation IP blocks), so each pattern excludes them and matches only identifiers
that look real.
"""

RESIDUAL_PHI_PATTERNS: dict[str, str] = {
    "ssn": r"(?<!\d)(?!9\d\d|000|666)\d{3}-\d{2}-\d{4}(?!\d)",
    "phone": r"(?<!\d)\(?\d{3}\)?[ .\-]?(?!555)\d{3}[ .\-]\d{4}(?!\d)",
    "email": r"(?i)[a-z0-9._%+\-]+@(?!example\.)[a-z0-9.\-]+\.[a-z]{2,}",
    "url": r"(?i)\b(?:https?://|www\.)(?!example\.)",
    "ip_address": r"(?<![\d.])(?!192\.0\.2\.|198\.51\.100\.|203\.0\.113\.)(?:\d{1,3}\.){3}\d{1,3}(?![\d.])",
}

# A labelled record or account number. Our identifier surrogates keep the original's format, so a match is
# residual PHI only when it is not one of the surrogates de-identification issued for that note.
LABELLED_RECORD_NUMBER = (r"(?i)\b(?:mrn|medical record(?: number| no\.?| #)?|acct|account(?: number| no\.?)?|"
                          r"record(?: number| no\.?))[ \t]*[:#]?[ \t]*(?P<id>(?=[A-Z\-]*\d)[A-Z0-9][A-Z0-9\-]{3,})\b")
