"""dicomd: a self-hosted DICOMweb archive."""

__version__ = "0.1.0"
