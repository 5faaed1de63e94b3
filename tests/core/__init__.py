"""Tests of cwsctl/core: the foundation (files, transport, bulk, audit, secrets, kinds)."""
