"""Versioned datasets on S3/MinIO: manifests, multipart upload, hash-checked staging, streaming loaders.

No database and no web here: this package runs on compute nodes too.
"""
