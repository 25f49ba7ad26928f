"""The public entry points as thin orchestration: save, load, inspect, convert, verify, migrate.

Internal: import them from :mod:`polybundle`.
"""
