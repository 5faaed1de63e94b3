"""OpenEMR: OAuth2 (registration, client assertions, tokens, login), Bulk FHIR export, patients
and the openemr Kind. Library: imports core and protocols only."""
