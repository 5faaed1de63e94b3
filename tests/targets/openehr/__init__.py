"""Tests of cwsctl/targets/openehr: ehr, composition, query, templates and the EHRbase sandbox."""
