"""Log lines an operator can search: one event per line with stable keys, as logfmt or JSON.

A line carries, in this order:

    ts       ISO 8601 UTC with milliseconds; left out under journald, which stamps every entry
    level    debug, info, warning, error, critical
    logger   the logger's name (meshd, meshd.dataplane, ...)
    event    a stable snake_case name (docs/operations.md lists them); ``log`` for a line that
             names none (a library's, or a message that is not an event)
    peer, reason
             when the call gives them: the member's name, and why
    ...      the call's other fields, in the order it gives them (subnet, state, flag, ...)
    msg      the human message, the same words the ``text`` format prints
    exc      a traceback, when there is one (on the same line: escaped in logfmt, a string in JSON)

Call sites give the fields with ``extra=`` and keep their message::

    log.info("member %s: %s", name, kind, extra={"event": "peer_dead", "peer": name, "reason": why})

``text`` is the human format (timestamp, level, logger, message) and prints no fields. Under
journald every format starts each line with the sd-daemon priority prefix ``<N>``, from which
journald sets the entry's PRIORITY (SyslogLevelPrefix=yes, systemd's default), and leaves the
timestamp to journald. Whether stderr is the journal is the caller's question
(`meshd.systemd.journal_stream`); this module only formats.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from typing import Any

FORMATS = ("text", "logfmt", "json")
"""The values of ``log_format``; the first is the default."""

SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
"""sd-daemon(3) priorities by logging level name; anything else is logged at info (6)."""

DEFAULT_EVENT = "log"
FIRST = ("peer", "reason")
"""Fields that come right after ``event`` whenever a call gives them."""

# Attributes every LogRecord has: whatever else a record carries came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12
}
_BARE = re.compile(r"[^\s\"=\\]+")  # printable, no space, quote, equals or backslash
_KEY_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def timestamp(created: float) -> str:
    """``2024-05-01T12:00:00.123Z``: sorts as text, and every tool parses it."""
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


def event_fields(
    record: logging.LogRecord, formatter: logging.Formatter, *, with_ts: bool = True
) -> dict[str, Any]:
    """The record as ordered key -> value pairs (the module docstring's order). Fields that are
    None are left out."""
    out: dict[str, Any] = {}
    if with_ts:
        out["ts"] = timestamp(record.created)
    out["level"] = record.levelname.lower()
    out["logger"] = record.name
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and v is not None}
    out["event"] = str(extra.pop("event", None) or DEFAULT_EVENT)
    for key in FIRST:
        if key in extra:
            out[key] = extra.pop(key)
    for key, value in extra.items():
        if key not in ("ts", "level", "logger", "msg", "exc"):  # the fixed keys win
            out[key] = value
    out["msg"] = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        out["exc"] = record.exc_text
    if record.stack_info:
        out["stack"] = formatter.formatStack(record.stack_info)
    return out


def logfmt_value(value: Any) -> str:
    """One logfmt value: bare when it is safe bare, else double-quoted with backslash escapes
    (``\\\\ \\" \\n \\r \\t``, other control characters as ``\\u00XX``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        text = ",".join(str(v) for v in items)
    else:
        text = str(value)
    if _BARE.fullmatch(text) and text.isprintable():
        return text
    return '"' + "".join(_escape(c) for c in text) + '"'


def _escape(c: str) -> str:
    if c in _ESCAPES:
        return _ESCAPES[c]
    return f"\\u{ord(c):04x}" if not c.isprintable() and c != " " else c


def logfmt_line(fields: Mapping[str, Any]) -> str:
    return " ".join(f"{_KEY_BAD.sub('_', k) or '_'}={logfmt_value(v)}" for k, v in fields.items())


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=str)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


# JSON leaves these raw with ensure_ascii=False, and readers that split on every Unicode line
# break (Python's str.splitlines) would cut the object in two.
_JSON_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def json_line(fields: Mapping[str, Any]) -> str:
    """One JSON object, UTF-8 as is, with no raw line break of any kind."""
    text = json.dumps(
        {k: _jsonable(v) for k, v in fields.items()}, ensure_ascii=False, separators=(",", ":")
    )
    return text.translate(_JSON_BREAKS)


class EventFormatter(logging.Formatter):
    """``logging.Formatter`` for every ``log_format``; ``journal``: stderr is the journal (the
    priority prefix, no timestamp)."""

    def __init__(self, fmt: str = "text", *, journal: bool = False) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
        text = (
            "%(name)s: %(message)s"
            if journal
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        super().__init__(text)
        self.kind = fmt
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        if self.kind == "text":
            line = super().format(record)
        else:
            fields = event_fields(record, self, with_ts=not self.journal)
            line = logfmt_line(fields) if self.kind == "logfmt" else json_line(fields)
        if not self.journal:
            return line
        # Every line of a multi-line text message (a traceback) is its own journal entry:
        # each gets the priority, not only the first.
        prefix = f"<{SYSLOG_PRIORITY.get(record.levelname, 6)}>"
        return "\n".join(prefix + part for part in line.split("\n"))
