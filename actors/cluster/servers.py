"""Parsing ``--cluster`` / ``airwave replay`` NATS addresses: pure, with a reason for each refusal."""

from __future__ import annotations

from urllib.parse import urlsplit

SCHEMES = ("nats", "tls")


def is_nats_url(text: str) -> bool:
    """Whether ``text`` is meant as NATS addresses (rather than a path)."""
    return text.split("://", 1)[0].lower() in SCHEMES and "://" in text


def parse_servers(text: str) -> list[str]:
    """``nats://HOST:PORT[,nats://HOST:PORT...]`` as a list of URLs; ``ValueError`` saying
    what is wrong with the first bad one."""
    urls = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not url for url in urls):
        raise ValueError(f"{text!r}: give one or more NATS URLs separated by commas, e.g. nats://127.0.0.1:4222")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme.lower() not in SCHEMES:
            raise ValueError(f"{url!r}: a NATS URL starts with nats:// or tls://")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host")
        if port is None:
            raise ValueError(f"{url!r}: give the port, e.g. {parts.scheme}://{parts.hostname}:4222")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{url!r}: a NATS URL is scheme://[user:password@]host:port, nothing after it")
    return urls
