"""Helpers shared by the tests of every directory, imported as `support.<module>` (pytest's pythonpath holds
tests/): Part 10 files (dicom_files), talking DICOMweb (dicomweb), a real server (server), the application
in process (asgi), the index backends (backends) and index rows (index_rows). No tests, no fixtures."""
