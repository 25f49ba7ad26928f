"""The read-only, seekable stream that bundle readers hand to frameworks.

:class:`SeekableReader` keeps a position over ``size`` bytes and answers
``readable``, ``seekable``, ``tell`` and ``seek`` as :class:`io.IOBase` does;
a subclass supplies ``readinto`` (a member's range of an open file, an
object fetched by range, bytes in memory).

Example:
    >>> class Zeros(SeekableReader):
    ...     def readinto(self, buffer):
    ...         count = min(len(buffer), max(0, self._size - self._pos))
    ...         buffer[:count] = bytes(count)
    ...         self._pos += count
    ...         return count
    >>> stream = Zeros(5)
    >>> stream.seek(-2, io.SEEK_END), stream.read(), stream.tell()
    (3, b'\\x00\\x00', 5)
"""

from __future__ import annotations

import io


class SeekableReader(io.RawIOBase):
    """A read-only stream over ``size`` bytes with its own position (starting at 0)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        """Return True: the stream reads."""
        return True

    def seekable(self) -> bool:
        """Return True: any position can be read."""
        return True

    def tell(self) -> int:
        """Return the position."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move, like :meth:`io.IOBase.seek`; a negative position is an :class:`OSError`.

        Example:
            >>> SeekableReader(4).seek(-1)
            Traceback (most recent call last):
            OSError: negative seek position -1
        """
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise OSError(f"negative seek position {target}")
        self._pos = target
        return target
