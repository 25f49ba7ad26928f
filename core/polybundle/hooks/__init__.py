"""The plugin system: hook specifications, the plugin manager and the one registry.

Internal: the public API is :mod:`polybundle` and, for backend authors, :mod:`polybundle.plugin`.
"""
