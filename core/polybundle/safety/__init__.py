"""Reading untrusted bytes safely: the restricted unpickler and the memory budget.

Internal: the public API is :mod:`polybundle` and, for backend authors, :mod:`polybundle.plugin`.
"""
