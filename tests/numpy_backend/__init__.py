"""A fourth backend that lives only in the tests: models are dicts of NumPy arrays.

It imports nothing from polybundle but its public plugin surface, is registered
through a plugin fixture (``get_plugin_manager().register(plugin)``), and passes
the same conformance feature matrix as the built-in backends: proof that a
plugin needs nothing else from the core.
"""
