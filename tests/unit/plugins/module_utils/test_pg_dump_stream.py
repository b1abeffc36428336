"""Counting rows in a plain pg_dump stream, whatever the chunk boundaries."""

import random

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils.engines.pg_dump_stream import CopyRowCounter
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import BackupError


def _data(name, copy_line, rows):
    """One table's data section as pg_dump writes it, with the comment before it."""
    comment = b"--\n-- Data for Name: %s; Type: TABLE DATA; Schema: public; Owner: postgres\n--\n\n" % name
    return comment + copy_line + b"\n" + rows + b"\\.\n\n"


# What pg_dump writes, including lines that look like its markers but are not.
DUMP = (
    b"--\n-- PostgreSQL database dump\n--\n\nCREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $$\n"
    b"SELECT '\nCOPY public.a (x, y) FROM stdin;\n';\n$$;\n\n"
    + _data(b"a", b"COPY public.a (x, y) FROM stdin;", b"1\t\\\\.\n\\\\.\n2\t\\N\n")
    + _data(b"Mixed Case (x)", b'COPY "Odd Schema"."Mixed Case (x)" (v) FROM stdin;', b"COPY public.b FROM stdin;\n")
    + _data(b"no_columns", b"COPY public.no_columns  FROM stdin;", b"\n\n")
    + _data(b"empty", b"COPY public.empty (x) FROM stdin;", b"")
    + _data(b"big", b"COPY public.big (x) FROM stdin;", b"".join(b"%d\t%s\n" % (i, b"y" * i) for i in range(5000)))
    # More backslashes than the counter probes one by one: escaped text and bytea, and \\. lines.
    + _data(b"escaped", b"COPY public.escaped (v) FROM stdin;", b"a\\\\b\\tc\t\\\\x0102\n\\\\.\n" * 300)
    + b"--\n-- PostgreSQL database dump complete\n--\n\n"
)
COUNTS = {
    "public.a": 3,
    '"Odd Schema"."Mixed Case (x)"': 1,
    "public.no_columns": 2,
    "public.empty": 0,
    "public.big": 5000,
    "public.escaped": 600,
}


def _count(data, sizes):
    counter = CopyRowCounter()
    pos = 0
    while pos < len(data):
        size = next(sizes)
        counter.feed(data[pos : pos + size])
        pos += size
    return counter.finish()


@pytest.mark.parametrize("seed", range(40))
def test_counts_do_not_depend_on_chunk_boundaries(seed):
    rng = random.Random(seed)  # noqa: S311 - chunk sizes, not secrets
    sizes = iter(lambda: rng.choice([1, 2, 3, 4, 5, 6, 7, 64, 4096, 1 << 20]), None)
    assert _count(DUMP, sizes) == COUNTS


def test_one_chunk_gives_the_same_counts():
    assert _count(DUMP, iter([len(DUMP)])) == COUNTS


@pytest.mark.parametrize("cut", [DUMP.index(b"2\t\\N"), DUMP.rindex(b"\\.\n") + 2, DUMP.rindex(b"\\.\n") + 1])
def test_a_stream_ending_inside_a_table_is_refused(cut):
    counter = CopyRowCounter()
    counter.feed(DUMP[:cut])
    with pytest.raises(BackupError, match="ends inside the data of table"):
        counter.finish()


def test_a_very_long_row_is_not_held_in_memory():
    counter = CopyRowCounter()
    counter.feed(_data(b"t", b"COPY public.t (x) FROM stdin;", b"")[: -len(b"\\.\n\n")])
    for _megabyte in range(64):
        counter.feed(b"z" * (1 << 20))
        assert len(counter._carry) <= 3
    counter.feed(b"\n\\.\n")
    assert counter.finish() == {"public.t": 1}
