"""CorEMR's CWS API: signing identity, signature verification, client, patients and the cws Kind.
Library: imports core and protocols only."""
