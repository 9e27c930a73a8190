"""How a client-supplied string is shown in text meant for people and line-based tools: the
server's log, `airwave replay`, the CLI.

A user id, channel id, title or property is anything a client chose. Printed raw, a newline
(or U+2028, which ``str.splitlines`` also splits on) forges a whole log line, a bidi override
reorders what a reader sees, and a space or ``=`` forges a ``key=value`` field. So a string
is shown as it is only when it is plainly one token of visible characters; anything else is
quoted, with every character that is not printable escaped.
"""

from __future__ import annotations

__all__ = ["file_slug", "shown"]

import hashlib

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


_SLUG_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SLUG_MAX = 100


def file_slug(text: str) -> str:
    """``text`` as one file-name component: letters, digits, ``_`` and ``-`` kept, every other
    character as ``%XX`` of its UTF-8 bytes (so two ids never share a slug, and no ``.``,
    ``/`` or control character reaches a path). Longer than 100 characters, it is cut and
    ends in ``~`` and 12 hex digits of the text's SHA-256, still one name per id."""
    slug = "".join(c if c in _SLUG_SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in text)
    if len(slug) <= _SLUG_MAX:
        return slug or "%"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return slug[: _SLUG_MAX - 13] + "~" + digest
