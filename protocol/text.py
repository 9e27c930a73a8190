"""How a client-supplied string is shown in text meant for people and line-based tools: the
server's log, `airwave replay`, the CLI.

A user id, channel id, title or property is anything a client chose. Printed raw, a newline
(or U+2028, which ``str.splitlines`` also splits on) forges a whole log line, a bidi override
reorders what a reader sees, and a space or ``=`` forges a ``key=value`` field. So a string
is shown as it is only when it is plainly one token of visible characters; anything else is
quoted, with every character that is not printable escaped.
"""

from __future__ import annotations

__all__ = ["shown"]

_SEPARATORS = frozenset(" =\"'\\")


def _escaped(char: str) -> str:
    if char in "\"\\":
        return "\\" + char
    if char.isprintable():
        return char
    point = ord(char)
    if point < 0x100:
        return f"\\x{point:02x}"
    return f"\\u{point:04x}" if point < 0x10000 else f"\\U{point:08x}"


def shown(text: str) -> str:
    """``text`` as is if it is one visible token, else in double quotes with escapes."""
    if text and text.isprintable() and not _SEPARATORS.intersection(text):
        return text
    return '"' + "".join(map(_escaped, text)) + '"'
