"""The file: checked to be UTF-8 text, hashed, and read as CSV records.

The file is streamed once to hash it and check it is UTF-8 (UTF-16, with or
without a byte-order mark, is refused), then read again from its start; a
non-seekable stream is spooled on the way. The delimiter (comma, semicolon or
tab) is the one that names the most known header columns.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from campaigns.importing.columns import match_header
from campaigns.importing.report import ImportFileError

_READ_BLOCK = 1 << 20
_SAMPLE_LINES = 50
_SAMPLE_CHARS = 64 * 1024
_DELIMITERS = ",;\t"
# A file whose first bytes (its header) have this share of NULs on one side of each
# pair is UTF-16; a UTF-8 header has none.
_UTF16_NUL_SHARE = 0.8
_UTF16_PROBE = 128

Source = BinaryIO | IO[bytes] | str | os.PathLike[str]


def _refuse_utf16_without_bom(head: bytes) -> None:
    """UTF-16 without a byte-order mark is valid UTF-8 (ASCII and NULs): tell by the NULs."""
    pairs = len(head) // 2
    if pairs == 0:
        return
    for order, nuls in (("UTF-16-BE", head[0::2]), ("UTF-16-LE", head[1::2])):
        if nuls[:pairs].count(0) >= _UTF16_NUL_SHARE * pairs:
            raise ImportFileError(
                f"file is {order} text without a byte-order mark; save it as 'CSV UTF-8'"
            )


def _check_and_hash(stream: IO[bytes], sink: IO[bytes] | None = None) -> str:
    """SHA-256 of the stream; raises :class:`ImportFileError` unless it is UTF-8 text."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines = 0
    size = 0
    meaningful = False
    first = True
    while True:
        block = stream.read(_READ_BLOCK)
        if first:
            first = False
            if block.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise ImportFileError(
                    "file is UTF-16 text; save it as 'CSV UTF-8' (UTF-8 with or without BOM)"
                )
            _refuse_utf16_without_bom(block[:_UTF16_PROBE])
        digest.update(block)
        if sink is not None:
            sink.write(block)
        size += len(block)
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as exc:
            at = max(exc.start - pending, 0)
            line = newlines + block[:at].count(b"\n") + 1
            raise ImportFileError(
                f"file is not UTF-8 text (invalid byte on line {line}); save it as 'CSV UTF-8'"
            ) from None
        if not meaningful and text.lstrip("\ufeff \t\r\n"):
            meaningful = True
        newlines += block.count(b"\n")
        if not block:
            break
    if size == 0 or not meaningful:
        raise ImportFileError("file is empty")
    return digest.hexdigest()


@contextmanager
def opened(source: Source, filename: str) -> Iterator[tuple[IO[bytes], str]]:
    """The file rewound to its start, and its SHA-256 (checked to be UTF-8 text)."""
    if isinstance(source, str | os.PathLike):
        try:
            handle: IO[bytes] = Path(source).open("rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ImportFileError(f"cannot read {filename}: {exc.strerror or exc}") from None
        with handle:
            sha = _check_and_hash(handle)
            handle.seek(0)
            yield handle, sha
        return
    if source.seekable():
        start = source.tell()
        sha = _check_and_hash(source)
        source.seek(start)
        yield source, sha
        return
    with tempfile.SpooledTemporaryFile(max_size=16 << 20) as spool:
        sha = _check_and_hash(source, spool)
        spool.seek(0)
        yield spool, sha


def _known_columns(header_line: str, delimiter: str) -> int:
    cells = next(csv.reader([header_line], delimiter=delimiter), [])
    return len(match_header(cells))


def _detect_delimiter(sample_lines: list[str]) -> str:
    """csv.Sniffer on a sample, checked against the header; else count per delimiter."""
    header = next((line for line in sample_lines if line.strip()), "")
    candidates = {d: _known_columns(header, d) for d in _DELIMITERS}
    best = max(candidates.values())
    try:
        sniffed: str | None = csv.Sniffer().sniff("".join(sample_lines), _DELIMITERS).delimiter
    except csv.Error:
        sniffed = None
    if sniffed in candidates and candidates[sniffed] == best:
        return sniffed
    # Fallback: the delimiter naming the most known columns, then the most frequent one.
    return max(_DELIMITERS, key=lambda d: (candidates[d], header.count(d)))


def records(text: IO[str]) -> Iterator[tuple[int, list[str]]]:
    """CSV records with the physical line each starts on (1-based)."""
    lines = iter(text)
    sample: list[str] = []
    size = 0
    for line in lines:
        sample.append(line)
        size += len(line)
        if len(sample) >= _SAMPLE_LINES or size >= _SAMPLE_CHARS:
            break
    reader = csv.reader(itertools.chain(sample, lines), delimiter=_detect_delimiter(sample))
    consumed = 0
    while True:
        start = consumed + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportFileError(f"line {start}: malformed CSV ({exc})") from None
        consumed = reader.line_num
        yield start, record
