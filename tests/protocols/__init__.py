"""Tests of cwsctl/protocols: the CWS signature and OAuth2 as library code."""
