"""Bulk patient loads: the row schema and its validation, CSV/JSON/NDJSON readers, the journal,
the runner and its per-row reports. Imports only core (a target comes in as its Kind)."""
