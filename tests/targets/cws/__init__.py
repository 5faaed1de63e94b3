"""Tests of cwsctl/targets/cws: sign and verify, the CWS sandbox."""
