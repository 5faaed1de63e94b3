"""Wire formats and standards that client and sandbox both speak, byte for byte (the CWS signature;
OAuth2, FHIR). Library only: imports core, never targets, cli or sandbox."""
