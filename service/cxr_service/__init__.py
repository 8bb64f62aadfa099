"""cxr service: DICOM ingest, analysis jobs and DICOM result writers around the cxr_models pipeline."""

__version__ = "0.1.0"
