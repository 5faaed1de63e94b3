"""The CorEMR stand-in of `cwsctl sandbox serve --kind cws`. Imports cwsctl.sandbox, protocols
and core, never the cws library (the stand-in must not share the client's reading)."""
