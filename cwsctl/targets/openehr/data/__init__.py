"""Operational templates shipped with cwsctl (package data), for the demo and tests.

``vital_signs.opt`` is a small ADL 1.4 operational template written for cwsctl: an encounter
COMPOSITION (``openEHR-EHR-COMPOSITION.encounter.v1``, named "Vital signs") holding blood
pressure OBSERVATIONs (``openEHR-EHR-OBSERVATION.blood_pressure.v2``) with a systolic and a
diastolic DV_QUANTITY in mm[Hg]. Its template id, read from the XML's ``template_id/value``, is
:data:`VITAL_SIGNS_TEMPLATE_ID`.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = ["VITAL_SIGNS_FILE", "VITAL_SIGNS_TEMPLATE_ID", "vital_signs_opt"]

#: The template id inside ``vital_signs.opt`` (the XML says so; the file name does not count).
VITAL_SIGNS_TEMPLATE_ID = "cwsctl.vital_signs.v1"
#: The file's name in this package.
VITAL_SIGNS_FILE = "vital_signs.opt"


def vital_signs_opt() -> bytes:
    """The bytes of the shipped vital signs OPT (XML)."""
    return files(__name__).joinpath(VITAL_SIGNS_FILE).read_bytes()
