"""openEHR REST (EHRbase): EHRs, compositions and their formats, templates, AQL, the openehr Kind.
Library: imports core and protocols only."""
