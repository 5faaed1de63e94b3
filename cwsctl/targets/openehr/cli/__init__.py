"""The openehr commands (ehr, composition, query, template, the demo) and option aliases. Imports
the cli framework, the openehr library, protocols and core."""
