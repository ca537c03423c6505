"""Compiled (numba) byte loop behind :mod:`pipeline.io.textstream`'s JSON element scanner.

Finding where one JSON array element ends means walking its bytes with a little state (in a string,
after a backslash, bracket depth); in Python that walk cost three times the parse of the element
itself. Imported by the scanner when it first runs (numba's import and first compile, cached on
disk next to this file or under ``NUMBA_CACHE_DIR``, take a second or two).
"""

from __future__ import annotations

import numba as nb
import numpy as np

NEED_MORE, COMMA, CLOSE_ARRAY, VALUE_DONE = 0, 1, 2, 3


@nb.njit(cache=True, nogil=True)
def scan_element(buf: np.ndarray, pos: int, depth: int, in_str: int, esc: int, max_depth: int, too_deep: int,
                 array: int) -> tuple[int, int, int, int, int, int]:
    """Walk ``buf`` from ``pos`` with the element's state so far; returns ``(pos, depth, in_str, esc,
    too_deep, status)``. ``status``: ``NEED_MORE`` (the buffer ended inside the element, ``pos`` is
    its length), ``COMMA`` or ``CLOSE_ARRAY`` (a ``,`` or ``]`` at depth 0 of an array at ``pos``),
    or ``VALUE_DONE`` (outside an array: a value closed just before ``pos``). ``too_deep`` is the
    first depth past ``max_depth`` (0 while within it). A stray closer at depth 0 stays in the element."""
    n = buf.shape[0]
    i = pos
    while i < n:
        c = buf[i]
        if in_str:
            if esc:
                esc = 0
            elif c == 92:  # backslash
                esc = 1
            elif c == 34:  # closing quote
                in_str = 0
                if depth == 0 and not array:
                    return i + 1, depth, in_str, esc, too_deep, VALUE_DONE
        elif c == 34:
            in_str = 1
        elif c == 91 or c == 123:  # [ {
            depth += 1
            if depth > max_depth and too_deep == 0:
                too_deep = depth
        elif c == 93 or c == 125:  # ] }
            if depth > 0:
                depth -= 1
                if depth == 0 and not array:
                    return i + 1, depth, in_str, esc, too_deep, VALUE_DONE
            elif array and c == 93:
                return i, depth, in_str, esc, too_deep, CLOSE_ARRAY
        elif c == 44 and depth == 0 and array:  # ,
            return i, depth, in_str, esc, too_deep, COMMA
        i += 1
    return n, depth, in_str, esc, too_deep, NEED_MORE


EMPTY, DEEP, OVERSIZE, CLOSES = 1, 2, 4, 8


@nb.njit(cache=True, nogil=True)
def scan_array(buf: np.ndarray, pos: int, max_depth: int, max_bytes: int, starts: np.ndarray, ends: np.ndarray,
               flags: np.ndarray) -> tuple[int, int]:
    """The elements of a JSON array that lie whole in ``buf`` from ``pos`` (just after ``[`` or a
    comma): ``(count, pos)`` with each element's bytes ``starts[i]:ends[i]`` and ``flags[i]`` (EMPTY,
    DEEP, OVERSIZE, and CLOSES when a ``]`` ended it: the array is done). ``pos`` comes back at the
    first element not found whole (it runs past the end of ``buf``), or after the closing bracket."""
    n = buf.shape[0]
    k = 0
    cap = starts.shape[0]
    while k < cap:
        i = pos
        while i < n and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
            i += 1
        if i >= n:
            return k, pos
        c = buf[i]
        if c == 44 or c == 93:  # an empty element
            starts[k] = i
            ends[k] = i
            flags[k] = EMPTY | (CLOSES if c == 93 else 0)
            k += 1
            pos = i + 1
            if c == 93:
                return k, pos
            continue
        end, depth, in_str, esc, too_deep, status = scan_element(buf, i, 0, 0, 0, max_depth, 0, 1)
        if status == NEED_MORE:
            return k, pos
        starts[k] = i
        ends[k] = end
        f = 0
        if end - i > max_bytes:
            f |= OVERSIZE
        elif too_deep:
            f |= DEEP
        if status == CLOSE_ARRAY:
            f |= CLOSES
        flags[k] = f
        k += 1
        pos = end + 1
        if status == CLOSE_ARRAY:
            return k, pos
    return k, pos
