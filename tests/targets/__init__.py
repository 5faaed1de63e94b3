"""Tests of cwsctl/targets/<t>: one folder per target (library, cli/ and sandbox/), each with its fixtures in conftest.py."""
