"""Tools on top of the API: the command line, parity checks, the demo, the pytest plugin.

Internal: the public API is :mod:`polybundle`.
"""
