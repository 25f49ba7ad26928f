"""The public entry points as thin orchestration: save, load, inspect, convert, verify,
migrate, checkpoint directories.

Internal: import them from :mod:`polybundle`.
"""
