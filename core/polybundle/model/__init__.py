"""The neutral model: tensor specs, layouts, canonical kinds, conversion plans, optimizer state.

Internal: the public API is :mod:`polybundle` and, for backend authors, :mod:`polybundle.plugin`.
"""
