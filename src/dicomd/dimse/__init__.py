"""The DIMSE gateway: a DICOM listener process (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET) on the same
index, object store and ingest path as DICOMweb."""
