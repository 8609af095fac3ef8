"""What a storage URL says: which kind of storage, the file behind it, the address of a proxy,
and how to show it in a message (without its password)."""

from __future__ import annotations

from pathlib import Path

from tuner.core.errors import UserError


def is_sqlite(url: str) -> bool:
    """A SQLite file (or memory): one machine's storage, one writer at a time."""
    return url.startswith("sqlite")


def is_journal(url: str) -> bool:
    """A journal file: a path ending in .log or .jsonl, or journal:PATH."""
    return url.endswith((".log", ".jsonl")) or url.startswith("journal:")


def local_file(url: str) -> Path | None:
    """The file behind a SQLite or journal storage URL (None for database servers)."""
    if is_journal(url):
        return Path(url.removeprefix("journal:").removeprefix("//"))
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///"))
    return None


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def parse_grpc_url(url: str) -> tuple[str, int]:
    """grpc://host:port -> (host, port), or a one-line error naming the URL."""
    address = url.removeprefix("grpc://").rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"storage {url}: expected grpc://HOST:PORT, e.g. grpc://127.0.0.1:13000")
    return host, int(port)
