"""Tests of cwsctl/targets/openemr: OAuth, export, the openemr kind and its sandbox."""
