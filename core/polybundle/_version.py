"""The polybundle release, recorded in every manifest it writes (``writer.polybundle``).

It sits below every layer so the format can name it without importing the package root.

Example:
    >>> __version__.count(".")
    2
"""

__version__ = "0.1.0"
