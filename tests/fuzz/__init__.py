"""Fuzz targets for cwsctl's parsers of untrusted input, and their seed corpora.

``targets.py`` holds one ``fuzz_<name>(data: bytes) -> None`` per parser: it returns when the
code under test returned or raised the CwsError subclass its contract allows, and lets anything
else escape (that is a finding). ``test_fuzz.py`` runs them under hypothesis in the test suite;
``bench/fuzz.py`` runs them for a fixed time, with atheris when it is installed.
"""
