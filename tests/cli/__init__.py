"""Tests of cwsctl/cli: the framework and the target-neutral commands, mostly as users run them."""
