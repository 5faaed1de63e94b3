"""Tests of cwsctl/sandbox: the server framework every flavour uses."""
