"""Bounded streaming of JSON text: encodings, JSONL lines and JSON array elements as raw bytes.

The readers never hold more than one record (plus one read chunk) in memory, whatever the file:

* :func:`open_utf8` opens a file (``.gz`` too) as a UTF-8 byte stream. A UTF-8 byte order mark is
  dropped; a UTF-16 or UTF-32 file (with a BOM, or recognised by the zero bytes of its first ASCII
  characters as RFC 4627 section 3 describes) is decoded and re-encoded as UTF-8 on the fly.
* :func:`iter_lines` splits a stream into lines, and :func:`iter_json_values` splits a JSON array
  (or a run of concatenated JSON values) into its elements, without parsing them: each element's
  bytes are found by a scanner that tracks strings and bracket depth, so a bad element (a bad
  escape, invalid UTF-8, a stray character) costs only itself and the next element starts where
  the scanner says. Both give a :class:`Oversize` instead of bytes for a record longer than
  ``max_bytes``: the scanner keeps going without buffering it, so memory stays at ``max_bytes``
  plus one chunk however long the record is; :func:`iter_json_values` gives a :class:`TooDeep` for
  an element nested deeper than ``max_depth`` (found while scanning, nothing is parsed).
* :func:`json_depth` is the exact nesting depth of one JSON text (strings skipped).

The scanner's byte loop is compiled (:mod:`pipeline.io._jsonscan`, numba): one call walks an element
(or what of it is buffered), so finding elements costs a fraction of parsing them; whitespace and
the bytes between elements are skipped with regular expressions.
"""

from __future__ import annotations

import codecs
import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

CHUNK = 1 << 20
#: per-record limits used when a source sets none (run.max_record_mb and run.max_depth in a config)
DEFAULT_MAX_RECORD_BYTES = 64 << 20
DEFAULT_MAX_DEPTH = 128  # orjson serialises at most 254 levels (meta of unmapped fields)

_BOMS = (  # longest first: the UTF-32-LE BOM starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


@dataclass
class Oversize:
    """A record longer than the limit: its full size, and its first bytes for the reject's ``raw``."""

    size: int
    head: bytes


@dataclass
class TooDeep:
    depth: int  # the depth at which the limit was passed (the record may go deeper)
    head: bytes


@dataclass
class Unterminated:
    """The file ended inside an array: ``data`` is the last element's bytes so far (at most the size
    limit; empty when the file ends after a comma or an opening bracket)."""

    data: bytes


class Utf8Stream(io.RawIOBase):
    """A byte stream read as UTF-8: the encoding is sniffed on the first read (:func:`sniff_encoding`),
    a UTF-8 BOM dropped, UTF-16/32 decoded and re-encoded (an undecodable sequence raises
    UnicodeDecodeError). ``encoding`` is what was found (None before the first read)."""

    def __init__(self, f: io.BufferedIOBase) -> None:
        self.f = f
        # read1: what a truncated gzip stream did decompress comes back before its EOFError does
        self._read = f.read1
        self.encoding: str | None = None
        self.dec: codecs.IncrementalDecoder | None = None
        self.first = b""
        self.eof = False
        self.err: UnicodeDecodeError | None = None

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.encoding is None:
            head = self.f.read(4)  # (a short read only at end of file)
            self.encoding, skip = sniff_encoding(head)
            self.first = head[skip:]
            if self.encoding != "utf-8":
                self.dec = codecs.getincrementaldecoder(self.encoding)("strict")
        if self.dec is None:
            if self.first:
                out, self.first = self.first, b""
                return out
            return self._read(n)
        if self.err is not None:
            raise self.err
        out = b""
        while not out and not self.eof:
            raw = self.first + self._read(n if n > 0 else CHUNK)
            self.first = b""
            self.eof = not raw
            try:
                out = self.dec.decode(raw, final=self.eof).encode("utf-8")
            except UnicodeDecodeError as e:  # give what decodes before it, raise on the next read
                self.err = e
                return bytes(e.object[: e.start]).decode(self.encoding).encode("utf-8")  # type: ignore[arg-type]
        return out

    def close(self) -> None:
        self.f.close()
        super().close()


def sniff_encoding(head: bytes) -> tuple[str, int]:
    """``(encoding, BOM length)`` of a JSON text from its first bytes (at least 4 unless shorter)."""
    for bom, enc in _BOMS:
        if head.startswith(bom):
            return enc, len(bom)
    if len(head) >= 4:  # JSON starts with an ASCII character: its zero bytes give the encoding away
        z = tuple(b == 0 for b in head[:4])
        if z == (True, True, True, False):
            return "utf-32-be", 0
        if z == (False, True, True, True):
            return "utf-32-le", 0
        if z[0] and z[2] and not z[1]:
            return "utf-16-be", 0
        if z[1] and z[3] and not z[0]:
            return "utf-16-le", 0
    return "utf-8", 0


def open_utf8(path: str) -> Utf8Stream:
    """Open ``path`` (gzip if it ends in ``.gz``) as a :class:`Utf8Stream`. Raises OSError when the file
    cannot be opened; a corrupt gzip stream raises on read."""
    f = open(path, "rb")  # noqa: SIM115 - closed with the stream
    return Utf8Stream(gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f)  # type: ignore[arg-type]


def iter_lines(f: io.RawIOBase, max_bytes: int, chunk: int = CHUNK) -> Iterator[bytes | Oversize]:
    """The lines of ``f`` (split at ``\\n``, without it), or an :class:`Oversize` for a line longer
    than ``max_bytes``; the oversized line is skipped as it streams past, never held."""
    parts: list[bytes] = []  # the current unfinished line
    plen = 0
    over: Oversize | None = None
    while True:
        data = f.read(chunk)
        if not data:
            break
        lines = data.split(b"\n")
        last = lines.pop()
        for k, line in enumerate(lines):
            if k == 0 and (parts or over is not None):
                if over is not None:
                    over.size += len(line)
                    yield over
                    over = None
                    continue
                parts.append(line)
                line = b"".join(parts)  # noqa: PLW2901 - the whole line
                parts, plen = [], 0
            if len(line) > max_bytes:
                yield Oversize(len(line), line[:_HEAD])
            else:
                yield line
        if over is not None:
            over.size += len(last)
        elif last:
            parts.append(last)
            plen += len(last)
            if plen > max_bytes:
                over = Oversize(plen, b"".join(parts)[:_HEAD])
                parts, plen = [], 0
    if over is not None:
        yield over
    elif parts:
        line = b"".join(parts)
        yield line if len(line) <= max_bytes else Oversize(len(line), line[:_HEAD])


_HEAD = 4000  # bytes of an unparsed record kept for the reject's raw text (RAW_LIMIT characters)
# everything up to the next bracket or unterminated string, skipping complete strings (json_depth)
_SKIPN = re.compile(rb'(?:[^"\[\]{}]++|"(?:[^"\\]++|\\.)*+")*+', re.S)
_WS = re.compile(rb"[ \t\r\n]*+")
_SCALAR = re.compile(rb'[^ \t\r\n\[\]{},"]*+')
_Q, _LB, _RB, _LC, _RC, _COMMA = b'"[]{},'


def json_depth(text: bytes) -> int:
    """The deepest bracket nesting of a JSON text (brackets inside strings do not count)."""
    depth = deepest = pos = 0
    n = len(text)
    while True:
        pos = _SKIPN.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= n:
            return deepest
        c = text[pos]
        pos += 1
        if c == _Q:  # an unterminated string: nothing after it counts
            return deepest
        if c in (_LB, _LC):
            depth += 1
            deepest = max(deepest, depth)
        elif depth:
            depth -= 1


class _Scanner:
    """Element boundaries of a JSON array over a byte stream (see the module docstring)."""

    def __init__(self, f: io.RawIOBase, max_bytes: int, max_depth: int, chunk: int) -> None:
        self.f, self.max_bytes, self.max_depth, self.chunk = f, max_bytes, max_depth, chunk
        self.buf = bytearray()
        self.pos = 0
        self.eof = False

    def fill(self, keep_from: int) -> bool:
        """Read more; bytes before ``keep_from`` are dropped (positions shift). False at end of file."""
        if self.eof:
            return False
        data = self.f.read(self.chunk)
        # a new buffer each time, never one resized in place: a bytearray with a live export cannot
        # be resized, and the NumPy view handed to the compiled scanner has outlived its ``del`` once
        # (a Dask worker thread, BufferError). The copy is the leftover plus one chunk, as += was.
        self.pos -= keep_from
        if not data:
            self.eof = True
            if keep_from:
                self.buf = self.buf[keep_from:]
            return False
        self.buf = self.buf[keep_from:] + data
        return True

    def skip_ws(self) -> bool:
        """Advance past whitespace; False at end of input."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return True
            if not self.fill(self.pos):
                return False

    def element(self, array: bool) -> tuple[bytes | Oversize | TooDeep | Unterminated, int]:
        """Scan one element starting at ``pos`` (not whitespace); returns it and the byte that ended it
        (``,`` or ``]`` in an array; 0 after a complete value outside one, or at end of file)."""
        start = self.pos
        depth = 0
        too_deep = 0
        over: Oversize | None = None
        buf = self.buf
        if not array and buf[start] not in (_LB, _LC, _Q):  # a bare scalar outside an array
            while (end := _SCALAR.match(self.buf, self.pos).end()) == len(self.buf):  # type: ignore[union-attr]
                self.pos = end
                more = self.fill(start)
                start = 0  # fill dropped the bytes before start
                if not more:
                    break
            self.pos = end = _SCALAR.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            return self._done(start, end, None, 0), 0
        import numpy as np

        from pipeline.io._jsonscan import NEED_MORE, VALUE_DONE, scan_element

        in_str = esc = 0
        while True:
            n = len(self.buf)
            view = np.frombuffer(self.buf, np.uint8)  # released below: a bytearray with a view cannot grow
            pos, depth, in_str, esc, too_deep, status = scan_element(
                view, self.pos, depth, in_str, esc, self.max_depth, too_deep, int(array))
            del view
            if status != NEED_MORE:
                if status == VALUE_DONE:
                    self.pos = pos
                    return self._done(start, pos, over, too_deep), 0
                self.pos = pos + 1
                return self._done(start, pos, over, too_deep), self.buf[pos]
            self.pos = n
            buf = self.buf
            # the buffer ends inside this element
            if over is None and n - start > self.max_bytes:
                over = Oversize(0, bytes(buf[start:start + _HEAD]))
            if over is not None:  # drop what was scanned: memory stays at one chunk
                over.size += self.pos - start
                start = self.pos
            more = self.fill(start)
            start = 0  # fill dropped the bytes before start
            if not more:
                if over is not None:
                    over.size += len(self.buf)
                    return over, 0
                return Unterminated(bytes(self.buf)), 0

    def _done(self, start: int, end: int, over: Oversize | None, too_deep: int) -> bytes | Oversize | TooDeep:
        if over is not None:
            over.size += end - start
            return over
        if end - start > self.max_bytes:
            return Oversize(end - start, bytes(self.buf[start:start + _HEAD]))
        if too_deep:
            return TooDeep(too_deep, bytes(self.buf[start:start + _HEAD]))
        return bytes(self.buf[start:end])


@dataclass
class Trailing:
    """Bytes after the closing bracket of the top-level array (``head``: the first of them)."""

    head: bytes


def iter_json_values(f: io.RawIOBase, max_bytes: int, max_depth: int, chunk: int = CHUNK
                     ) -> Iterator[bytes | bytearray | Oversize | TooDeep | Unterminated | Trailing]:
    """The elements of the top-level JSON array in ``f`` as raw bytes (or the top-level values, when
    the text is not an array), each at most ``max_bytes`` long and ``max_depth`` deep; the markers
    say what else was found. An empty element (``[1,,2]``, a trailing comma) is ``b""``."""
    s = _Scanner(f, max_bytes, max_depth, chunk)
    if not s.skip_ws():
        return
    array = s.buf[s.pos] == _LB
    if not array:
        while s.skip_ws():
            if s.buf[s.pos] == _COMMA:  # lenient: values separated by commas
                s.pos += 1
                continue
            yield s.element(False)[0]
        return
    s.pos += 1
    if s.skip_ws() and s.buf[s.pos] == _RB:  # []
        s.pos += 1
    else:
        import numpy as np

        from pipeline.io import _jsonscan as k

        starts, ends, flags = np.empty(4096, np.int64), np.empty(4096, np.int64), np.empty(4096, np.int64)
        done = False
        while not done:
            # every element that lies whole in the buffer, found in one compiled call
            view = np.frombuffer(s.buf, np.uint8)
            count, pos = k.scan_array(view, s.pos, max_depth, max_bytes, starts, ends, flags)
            del view  # the buffer may grow below
            buf = s.buf
            for a, b, f in zip(starts[:count].tolist(), ends[:count].tolist(), flags[:count].tolist(), strict=True):
                if not f:
                    yield buf[a:b]  # a bytearray copy (orjson reads it as it is)
                    continue
                if f & k.EMPTY:
                    yield b""
                elif f & k.OVERSIZE:
                    yield Oversize(b - a, bytes(buf[a:a + _HEAD]))
                elif f & k.DEEP:
                    yield TooDeep(max_depth + 1, bytes(buf[a:a + _HEAD]))
                else:
                    yield buf[a:b]
                done = bool(f & k.CLOSES)
            s.pos = pos
            if done or count == len(starts):
                continue
            # the next element runs past the buffer: scan it with refills (and its size limit)
            if not s.skip_ws():
                yield Unterminated(b"")
                return
            if s.buf[s.pos] in (_COMMA, _RB):  # an empty element
                yield b""
                end = s.buf[s.pos]
                s.pos += 1
            else:
                el, end = s.element(True)
                yield el
                if isinstance(el, Unterminated):
                    return
            if end == _RB:
                done = True
            elif end == 0:
                return
    if s.skip_ws():
        yield Trailing(bytes(s.buf[s.pos:s.pos + _HEAD]))
