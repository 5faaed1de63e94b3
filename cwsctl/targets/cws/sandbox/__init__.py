"""The CWS flavour of the sandbox: a CorEMR stand-in that checks signed requests and signs answers.

Built on :mod:`cwsctl.sandbox`; imports that framework, :mod:`cwsctl.protocols` and
:mod:`cwsctl.core` only, never the CWS client (the stand-in must not share the client's reading).
"""
