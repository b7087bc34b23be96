"""The optional C fast path of the DICOM parser. Without a C compiler the build skips it (optional=True)
and dicomd runs its pure Python parser, with the same results."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("dicomd.dicom._fastscan", ["src/dicomd/dicom/_fastscan.c"], optional=True),
    ]
)
