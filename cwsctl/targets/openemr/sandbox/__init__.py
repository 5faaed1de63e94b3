"""The OpenEMR stand-in of `cwsctl sandbox serve --kind openemr`. Imports cwsctl.sandbox, protocols
and core, never the openemr library (the stand-in must not share the client's reading)."""
