"""Ingest: read raw notes in any supported format, map columns, quarantine bad rows."""
