"""Reading a plain-format pg_dump stream as it passes: the rows of every table, counted between
its ``COPY ... FROM stdin;`` line and the ``\\.`` line that ends its data.

In COPY's text format a row is one line (newlines, tabs and backslashes in values are escaped),
and a data line can never be ``\\.`` alone (a backslash in a value is written ``\\\\``), so the
newlines of a data section are its rows. Memory stays bounded whatever the row length: inside
a data section only the last three bytes are carried from one chunk to the next.
"""

import re

from ..errors import BackupError

_IDENT = rb'(?:"(?:[^"]|"")*"|[^".\s(]+)'
# pg_dump's form: COPY schema.table (col, ...) FROM stdin;  (two spaces, no list, for a table without columns)
_COPY_LINE = re.compile(rb"COPY (" + _IDENT + rb"\." + _IDENT + rb") (?:\(.*\) | )FROM stdin;")
_COPY = b"COPY "
_END = b"\\.\n"
# A header line longer than this is not pg_dump's (1600 columns of 63-byte names fit well within).
_MAX_HEADER = 1024 * 1024
# pg_dump's comment before each table's data: a COPY line without it (in a function body or a
# text literal of the schema) does not start a data section.
_DATA_COMMENT = re.compile(rb"(?:\A|\n)-- Data for Name: [^\n]*; Type: TABLE DATA; [^\n]*\n--\n\n\Z")
_COMMENT_WINDOW = 2048  # the text kept before a COPY line: the comment's names are at most 63 bytes each
_BACKSLASH_PROBES = 64  # per chunk, before the search falls back to the whole terminator


def _section_end(data, pos):
    """Where the line ``\\.`` starts in ``data[pos:]`` after a newline, or -1.

    Data lines rarely hold a backslash, and a one-byte search runs several times faster than
    a search for the whole terminator: probe the backslashes first, and fall back to the
    terminator's search when a section holds many of them (escaped text, bytea).
    """
    for _probe in range(_BACKSLASH_PROBES):
        found = data.find(b"\\", pos)
        if found < 0:
            return -1
        if found > 0 and data[found - 1] == 0x0A and data.startswith(_END, found):
            return found
        pos = found + 1
    found = data.find(b"\n" + _END, pos - 1)
    return found + 1 if found >= 0 else -1


class CopyRowCounter:
    """Feed it every chunk of a plain pg_dump stream in order, then call ``finish()``."""

    def __init__(self):
        self.counts = {}
        self._table = None  # the table whose data section is being read
        self._rows = 0
        self._carry = b""
        self._line_start = True  # whether the carry (or the next chunk) starts a line
        self._before = b""  # the end of the schema text before the scan position

    def feed(self, chunk):
        data = self._carry + chunk if self._carry else chunk
        self._carry = b""
        pos = 0
        while True:
            pos = self._scan_data(data, pos) if self._table is not None else self._scan_ddl(data, pos)
            if pos is None:
                return

    def _scan_data(self, data, pos):
        """Count rows up to the section's end; return where scanning goes on, or None when the
        chunk is used up."""
        end = pos if self._line_start and data.startswith(_END, pos) else _section_end(data, pos)
        if end >= 0:
            self._rows += data.count(b"\n", pos, end)
            self.counts[self._table] = self.counts.get(self._table, 0) + self._rows
            self._table, self._rows, self._line_start = None, 0, True
            return end + len(_END)
        keep = max(pos, len(data) - (len(_END) - 1))  # a terminator may straddle two chunks
        self._rows += data.count(b"\n", pos, keep)
        if keep > pos:
            self._line_start = data[keep - 1 : keep] == b"\n"
        self._carry = data[keep:]
        return None

    def _scan_ddl(self, data, pos):
        """Find the next COPY line; return where its data starts, or None when the chunk is used up."""
        if self._line_start and data.startswith(_COPY, pos):
            start = pos
        else:
            found = data.find(b"\n" + _COPY, pos)
            start = found + 1 if found >= 0 else -1
        if start < 0:
            self._keep_partial_line(data, pos)
            return None
        before = self._remember(data, pos, start)
        newline = data.find(b"\n", start)
        if newline < 0:
            if len(data) - start > _MAX_HEADER:
                raise BackupError("the dump has a COPY line longer than pg_dump writes")
            self._carry, self._line_start = data[start:], True
            return None
        match = _COPY_LINE.fullmatch(data, start, newline)
        if match is None or not _DATA_COMMENT.search(before):
            # Not a data section's header (COPY in a function body, say): go on after it.
            self._remember(data, start, newline + 1)
            self._line_start = True
            return newline + 1
        self._before = b""
        self._table = match.group(1).decode("utf-8")
        self._rows = 0
        self._line_start = True
        return newline + 1

    def _remember(self, data, start, end):
        """Keep the end of the schema text ``data[start:end]`` that precedes the scan position."""
        self._before = (self._before + data[max(start, end - _COMMENT_WINDOW) : end])[-_COMMENT_WINDOW:]
        return self._before

    def _keep_partial_line(self, data, pos):
        """Carry the chunk's last, unfinished line when it may still become a COPY line."""
        last = data.rfind(b"\n", pos) + 1
        if last == 0:
            if not self._line_start:
                self._remember(data, pos, len(data))
                return  # the line began in an earlier chunk and is not a COPY line
            last = pos
        self._remember(data, pos, last)
        partial = data[last:]
        if not partial:
            self._line_start = True
        elif _COPY.startswith(partial[: len(_COPY)]):
            self._carry, self._line_start = partial, True
        else:
            self._remember(data, last, len(data))
            self._line_start = False

    def finish(self):
        """Return ``{schema.table: rows}``; raise BackupError when the stream ends inside a table's data."""
        if self._table is not None:
            raise BackupError(f"the dump ends inside the data of table {self._table} (no \\. line)")
        return dict(self.counts)
