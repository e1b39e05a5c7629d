"""Reading log lines back in the tests: a logfmt parser (go-logfmt's rules), and the formatted
fields of captured records."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from meshd.logfmt import EventFormatter

_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"'}


def parse_logfmt(line: str) -> dict[str, str]:
    """``key=value`` pairs separated by spaces; a value is bare or double-quoted with backslash
    escapes (``\\uXXXX`` included). Raises on anything else, a repeated key included."""
    out: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        if line[i] == " ":
            i += 1
            continue
        eq = line.index("=", i)
        key = line[i:eq]
        if not key or " " in key or '"' in key:
            raise ValueError(f"bad key {key!r} in {line!r}")
        i = eq + 1
        if i < n and line[i] == '"':
            i += 1
            buf = []
            while line[i] != '"':
                if line[i] == "\\":
                    c = line[i + 1]
                    if c == "u":
                        buf.append(chr(int(line[i + 2 : i + 6], 16)))
                        i += 6
                    else:
                        buf.append(_UNESCAPE[c])
                        i += 2
                    continue
                buf.append(line[i])
                i += 1
            i += 1
            if i < n and line[i] != " ":
                raise ValueError(f"text after a quoted value in {line!r}")
            value = "".join(buf)
        else:
            end = line.find(" ", i)
            end = n if end < 0 else end
            value = line[i:end]
            if '"' in value or "=" in value:
                raise ValueError(f"bare value {value!r} in {line!r}")
            i = end
        if key in out:
            raise ValueError(f"key {key} twice in {line!r}")
        out[key] = value
    return out


def events(records: Iterable[logging.LogRecord]) -> list[dict[str, str]]:
    """Each record as the logfmt format writes it, parsed back."""
    fmt = EventFormatter("logfmt")
    return [parse_logfmt(fmt.format(r)) for r in records]
