"""Ingest public cases into the store: incremental, resumable, polite."""
