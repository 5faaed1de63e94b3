"""The EHRbase stand-in of `cwsctl sandbox serve --kind openehr`. Imports cwsctl.sandbox, protocols
and core, never the openehr library (the stand-in must not share the client's reading)."""
