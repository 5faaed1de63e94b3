"""The HL7 FHIR Bulk Data pieces client and sandbox both speak: the export request, instants,
NDJSON checks, OperationOutcome text, and the generic Bulk Data client (``exporter``).

Nothing is imported here: each module is loaded when it is needed.
"""
