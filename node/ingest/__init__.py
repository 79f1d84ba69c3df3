"""Durable DICOM ingest: the C-STORE receiver, file import, and the one persist path they share."""
