"""The openemr commands (oauth, export, keys jwks, keys rotate, the demo) and option aliases.
Imports the cli framework, the openemr library, protocols and core."""
