"""Reading document files: bytes -> (line, JSON value), with one error type for every bad input.

The container of a file is decided by its content, never by its suffix: JSON Lines (one value per
line), one JSON list, or one object with an "instances" list (the instruction-tuning layout of
the Wiki2023 releases). A UTF-8 byte-order mark and any line ends (LF, CRLF, CR) are accepted.
Rejected, each with one line naming the file, the line and (where there is one) the field:
compressed or binary files, UTF-16, invalid UTF-8 (with a hint for Latin-1), NaN and Infinity,
duplicate keys, JSON nested too deeply to read, a pretty-printed object where JSON Lines is
expected, and (in the strings that are used) lone UTF-16 surrogates and NUL characters.
"""
from __future__ import annotations

import bisect
import json
import re
from pathlib import Path
from typing import NamedTuple

from kl_utils.core.command import UserError

UNDETECTED = "not detected"


class DocumentFormatError(UserError, ValueError):
    """A user input that cannot be used. Printed as one line:
    FILE:LINE: field PATH: what is wrong (expected ...; layout L)."""

    def __init__(self, file, line, field, message, expected=None, layout=None):
        self.file, self.line, self.field = str(file), line, field
        self.problem, self.expected, self.layout = message, expected, layout
        super().__init__(message)

    def __str__(self):
        where = f"{self.file}:{self.line}" if self.line else self.file
        head = f"{where}: field {self.field!r}: " if self.field else f"{where}: "
        notes = "; ".join(n for n in (self.expected and f"expected {self.expected}",
                                       self.layout and f"layout {self.layout}") if n)
        text = head + self.problem + (f" ({notes})" if notes else "")
        return text.replace("\r", "\\r").replace("\n", "\\n")  # always one line


class Source(NamedTuple):
    """Where a record came from, for error messages and per-file counts. `names` maps a generic
    field to its name in the source file; `qa` gives, per QA pair, (file, line, {"question": name,
    "answer": name}) when pairs come from other lines or files than their document."""
    file: str
    line: int | None
    names: dict | None = None
    qa: list | None = None


class Parsed(NamedTuple):
    file: Path
    container: str  # "lines" (JSON Lines) | "list" (one JSON list) | "instances" ({"instances": [...]})
    items: list     # [(line, value)]
    top: dict | None = None  # the object around "instances"


def short(value, limit: int = 60) -> str:
    """repr of a value, cut to `limit` characters (a 20 MB string must not end up in a message)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[:limit] + ("...'" if isinstance(value, str) else "...")


def kind(value) -> str:
    """'a string', 'an integer', 'null', ... for messages."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


_BAD_CHAR = re.compile("[\ud800-\udfff\x00]")


def check_str(value, file, line, field, what: str = "a non-empty string") -> str:
    """A string that can be written as UTF-8 and is not blank; otherwise the error names the field."""
    if not isinstance(value, str):
        raise DocumentFormatError(file, line, field, f"is {kind(value)}", expected=what)
    if not value.strip():
        raise DocumentFormatError(file, line, field, "is empty or whitespace only", expected=what)
    bad = _BAD_CHAR.search(value)
    if bad:
        char = bad.group()
        what_char = "a NUL character" if char == "\x00" else f"a lone UTF-16 surrogate \\u{ord(char):04x}"
        raise DocumentFormatError(file, line, field, f"contains {what_char} at character {bad.start()}",
                                  expected="text that can be written as UTF-8")
    return value


# ---------------------------------------------------------------------------------------------
# Bytes -> text

MAGIC = {b"\x1f\x8b": "gzip-compressed", b"PK\x03\x04": "a zip archive", b"BZh": "bzip2-compressed",
         b"\xfd7zXZ\x00": "xz-compressed", b"\x28\xb5\x2f\xfd": "zstd-compressed", b"PAR1": "a Parquet file"}
LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")
TEXT_EXPECTED = "UTF-8 JSON text"


def _byte_position(raw: bytes, pos: int) -> tuple[int, int]:
    """(line, column) of a byte offset, counting LF, CRLF and CR as line ends."""
    breaks = list(_LINE_BREAK_BYTES.finditer(raw, 0, pos))
    return len(breaks) + 1, pos - (breaks[-1].end() if breaks else 0) + 1


def read_text(path) -> str:
    """The file's text: UTF-8 (a byte-order mark is dropped); anything else is an error."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DocumentFormatError(path, None, None, f"cannot be read: {e.strerror or e}", layout=UNDETECTED) from None
    for magic, what in MAGIC.items():
        if raw.startswith(magic):
            raise DocumentFormatError(path, None, None, f"is {what}", expected=f"uncompressed {TEXT_EXPECTED}",
                                      layout=UNDETECTED)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentFormatError(path, None, None, "is UTF-16 encoded: it starts with a UTF-16 byte-order mark",
                                  expected=f"{TEXT_EXPECTED}; re-save it as UTF-8", layout=UNDETECTED)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    nul = raw.find(b"\x00")
    if nul >= 0:
        line, col = _byte_position(raw, nul)
        raise DocumentFormatError(path, line, None, f"contains a NUL byte at column {col}",
                                  expected=f"{TEXT_EXPECTED}, not a binary or UTF-16 file", layout=UNDETECTED)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line, col = _byte_position(raw, e.start)
        raise DocumentFormatError(
            path, line, None, f"is not valid UTF-8: byte 0x{raw[e.start]:02x} at column {col}",
            expected=f"{TEXT_EXPECTED}; a Latin-1 / Windows-1252 file converts with `iconv -f latin1 -t utf-8`",
            layout=UNDETECTED) from None


# ---------------------------------------------------------------------------------------------
# Text -> JSON values with their lines

class _Reject(Exception):
    """Raised by the decoder hooks: valid JSON syntax we refuse (NaN, duplicate keys)."""


def _pairs(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _Reject(f"has the key {short(key)} twice in one object")
        obj[key] = value
    return obj


def _constant(name):
    raise _Reject(f"contains {name}, which is not valid JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant)
_WS = re.compile(r"[ \t\r\n]*")


class _Text:
    """A file's text with its line starts (LF, CRLF or CR), for errors that point into the file."""

    def __init__(self, path, text):
        self.path, self.text = path, text
        self.starts = [0] + [m.end() for m in LINE_BREAK.finditer(text)]

    def line(self, pos: int) -> int:
        return bisect.bisect_right(self.starts, pos)

    def col(self, pos: int) -> int:
        return pos - self.starts[self.line(pos) - 1] + 1

    def skip(self, pos: int) -> int:
        return _WS.match(self.text, pos).end()

    def error(self, pos, problem, expected=None, layout=None):
        return DocumentFormatError(self.path, self.line(pos), None, problem, expected, layout)

    def decode(self, pos: int, text: str | None = None, offset: int = 0, expected=None, layout=None):
        """(value, end) of the JSON value at `pos` (of `text`, a slice starting at `offset`)."""
        try:
            return _DECODER.raw_decode(self.text if text is None else text, pos)
        except json.JSONDecodeError as e:
            at = offset + e.pos
            msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # "Unterminated string starting at"
            raise self.error(at, f"is not valid JSON: {msg} at column {self.col(at)}", expected, layout) from None
        except _Reject as e:
            raise self.error(offset + pos, str(e), expected, layout) from None
        except RecursionError:
            raise self.error(offset + pos, "is nested too deeply to read: lists or objects more than about "
                                           "1,000 levels deep", expected, layout) from None


LINES_EXPECTED = "JSON Lines: one document object per line"


def _layout_hint(items) -> str | None:
    """The layout a JSON Lines / list file is being read as, from its first object (for errors)."""
    first = items[0][1] if items else None
    return ("wiki2023_bio" if "evidence_text" in first else "jsonl") if isinstance(first, dict) else None


def _lines(t: _Text) -> list:
    items = []
    for number, (start, end) in enumerate(zip(t.starts, t.starts[1:] + [len(t.text) + 1]), start=1):
        line = LINE_BREAK.sub("", t.text[start:end])
        if not line.strip():
            continue
        layout = _layout_hint(items)
        lead = len(line) - len(line.lstrip(" \t"))
        value, stop = t.decode(lead, line, start, expected=LINES_EXPECTED, layout=layout)
        if line[stop:].strip():
            raise t.error(start + stop, f"has more after the JSON value at column {stop + 1}",
                          expected=LINES_EXPECTED, layout=layout)
        if not isinstance(value, dict):
            raise t.error(start, f"is {kind(value)}", expected="a JSON object: one document per line", layout=layout)
        items.append((number, value))
    return items


def _array(t: _Text, pos: int, what: str, objects: bool = True) -> tuple[list, int]:
    """The items of the JSON list at `pos` with their lines, and the position after it."""
    items, n = [], len(t.text)
    pos = t.skip(pos + 1)
    if pos < n and t.text[pos] == "]":
        return items, pos + 1
    while True:
        layout = _layout_hint(items) if objects else None
        value, end = t.decode(pos, expected=what, layout=layout)
        if objects and not isinstance(value, dict):
            raise t.error(pos, f"is {kind(value)}", expected="a JSON object, one document, as each item of the list",
                          layout=layout)
        items.append((t.line(pos), value))
        pos = t.skip(end)
        if pos < n and t.text[pos] in ",]":
            if t.text[pos] == "]":
                return items, pos + 1
            pos = t.skip(pos + 1)
            continue
        problem = ("ends inside the JSON list" if pos >= n else
                   f"is not valid JSON: expected ',' or ']' at column {t.col(pos)}")
        raise t.error(min(pos, n - 1), problem, expected=what, layout=layout)


def _instances(t: _Text, pos: int) -> Parsed:
    """An object already known to be valid JSON, scanned for its "instances" list (with lines)."""
    top, items = {}, []
    pos = t.skip(pos + 1)
    while t.text[pos] != "}":
        key, pos = _DECODER.raw_decode(t.text, pos)
        pos = t.skip(t.skip(pos) + 1)  # the ':'
        if key == "instances" and t.text[pos] == "[":
            items, pos = _array(t, pos, "a list of instances", objects=False)
            top[key] = [v for _, v in items]
        else:
            top[key], pos = _DECODER.raw_decode(t.text, pos)
        pos = t.skip(pos)
        if t.text[pos] == ",":
            pos = t.skip(pos + 1)
    return Parsed(Path(t.path), "instances", items, top)


def parse_file(path) -> Parsed:
    """Read and parse one file, deciding its container by content (see the module docstring)."""
    t = _Text(path, read_text(path))
    start = t.skip(0)
    if start == len(t.text):
        raise DocumentFormatError(path, None, None, "is empty: no documents",
                                  expected="JSON Lines, a JSON list, or an object with an \"instances\" list",
                                  layout=UNDETECTED)
    if t.text[start] == "[":
        items, end = _array(t, start, "a JSON list of document objects")
        if t.skip(end) < len(t.text):
            raise t.error(t.skip(end), "has more after the JSON list that ends on line "
                                       f"{t.line(end - 1)}", expected="one JSON list", layout=_layout_hint(items))
        return Parsed(Path(path), "list", items)
    if t.text[start] != "{":
        return Parsed(Path(path), "lines", _lines(t))
    first_end = t.starts[t.line(start)] if t.line(start) < len(t.starts) else len(t.text)
    try:
        value, end = t.decode(start)
    except DocumentFormatError as err:
        nxt = t.skip(first_end)
        if err.line == t.line(start) or t.text.startswith("{", nxt):
            return Parsed(Path(path), "lines", _lines(t))  # JSON Lines with a broken line: report it there
        err.layout = UNDETECTED
        raise
    rest = t.skip(end)
    if isinstance(value, dict) and "instances" in value and rest == len(t.text):
        return _instances(t, start)
    if end <= first_end:
        return Parsed(Path(path), "lines", _lines(t))
    if rest == len(t.text):
        raise t.error(start, f"is one JSON object spread over lines {t.line(start)}-{t.line(end - 1)}",
                      expected=f"{LINES_EXPECTED}, as `jq -c . FILE` writes it, or an object with an "
                               "\"instances\" list", layout=UNDETECTED)
    raise t.error(rest, "starts a second JSON object here, after one spread over lines "
                        f"{t.line(start)}-{t.line(end - 1)}",
                  expected=f"{LINES_EXPECTED}, as `jq -c . FILE` writes them", layout=UNDETECTED)


def layout_of(parsed: Parsed) -> str:
    """The layout of a parsed file: instances, wiki2023_bio (items with evidence_text) or jsonl."""
    if parsed.container == "instances":
        return "instances"
    return _layout_hint(parsed.items) or "jsonl"


def split_from_name(path) -> str | None:
    """train / valid / test from a file name (train.json, film_qa_val.jsonl, ...), else None."""
    for token in reversed(re.split(r"[^a-z]+", Path(path).stem.lower())):
        if token in ("train", "test"):
            return token
        if token in ("valid", "val", "dev", "validation"):
            return "valid"
    return None
