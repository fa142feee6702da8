"""Stage 4, documents: sections, header data, templates and the rendered outputs
(.docx, PDF, FHIR, HL7).
"""
