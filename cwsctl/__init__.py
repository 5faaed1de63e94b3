"""cwsctl: sign, send and verify CorEMR Web Services (CWS) requests."""

__version__ = "0.1.0"
