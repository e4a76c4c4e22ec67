"""The errors downloads raise, the same whichever client does the work: FileNotFoundError (no
such repository, revision or file; offline and not cached), PermissionError (gated repository,
token refused), :class:`DownloadConnectionError` (network) and :class:`DownloadError` (other
answers, size or checksum mismatch)."""

from __future__ import annotations

import errno
from typing import Mapping

__all__ = ["DownloadError", "DownloadConnectionError", "http_error", "offline_miss"]


class DownloadError(OSError):
    """A download failed: bad answer from the server, size or sha256 mismatch."""


class DownloadConnectionError(DownloadError, ConnectionError):
    """The server could not be reached, or the transfer was cut off (run again to resume)."""


def http_error(status: int, headers: Mapping[str, str], url: str, what: str, has_token: bool) -> OSError:
    """The exception for a Hub answer ``status`` (>= 400) about ``what``.

    The Hub answers 401 both for a repository that does not exist and for a private one asked
    anonymously, and says which in ``X-Error-Code`` (``RepoNotFound``, ``GatedRepo``,
    ``EntryNotFound``, ``RevisionNotFound``)."""
    code = headers.get("X-Error-Code") or headers.get("x-error-code")
    message = headers.get("X-Error-Message") or headers.get("x-error-message") or ""
    if code == "GatedRepo":
        return PermissionError(errno.EACCES, f"{what} is gated: accept its terms on the Hub, then pass token= "
                               "or set HF_TOKEN" + (" (the token given has no access yet)" if has_token else ""), url)
    if code == "RepoNotFound" or (status == 401 and "Invalid credentials" not in message and not has_token):
        hint = ("or the token has no access to it" if has_token else
                "or it is private: pass token= or set HF_TOKEN")
        return FileNotFoundError(errno.ENOENT, f"{what} not found (HTTP {status}), {hint}", url)
    if status in (401, 403):
        hint = "the token was refused or has no access to it" if has_token else "pass token= or set HF_TOKEN"
        return PermissionError(errno.EACCES, f"access denied to {what} (HTTP {status}); {hint}", url)
    if status == 404 or code in ("EntryNotFound", "RevisionNotFound"):
        return FileNotFoundError(errno.ENOENT, f"{what} not found (HTTP {status})", url)
    return DownloadError(f"HTTP {status}{': ' + message if message else ''} for {url}")


def offline_miss(message: str) -> FileNotFoundError:
    """huggingface_hub's ``LocalEntryNotFoundError`` (a FileNotFoundError) when it is installed,
    else a FileNotFoundError: what the Hub's own client raises for a file offline mode lacks."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return FileNotFoundError(message)
    return LocalEntryNotFoundError(message)
