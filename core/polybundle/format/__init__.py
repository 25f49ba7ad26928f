"""The bundle format: zip reading and atomic writing, manifest, params, schemas, detection.

Internal: the public API is :mod:`polybundle` and, for backend authors, :mod:`polybundle.plugin`.
"""
