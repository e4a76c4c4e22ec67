"""Downloads through ``huggingface_hub`` (``pip install cyllama[hub]``): its cache, resumed
transfers, tokens (``HF_TOKEN``, ``hf auth login``), its progress bars and its checks. Imported
only when a download runs, so ``import cyllama`` stays fast.

Settings huggingface_hub reads once at import (``HF_ENDPOINT``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``) are read here at each call and passed on, so they can change at run time."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ._errors import DownloadConnectionError, DownloadError, http_error

__all__ = ["available", "list_files", "fetch"]

# Class names, across huggingface_hub's HTTP clients (requests, httpx), of a failed connection.
_NETWORK_ERRORS = {"TransportError", "ConnectionError", "Timeout", "TimeoutException", "OfflineModeIsEnabled"}


def available() -> bool:
    """Whether huggingface_hub is installed (looked up, not imported)."""
    return importlib.util.find_spec("huggingface_hub") is not None


def _is_network(exc: BaseException | None) -> bool:
    return exc is not None and any(c.__name__ in _NETWORK_ERRORS for c in type(exc).__mro__)


def _mapped(exc: Exception, url: str, what: str, has_token: bool) -> Exception:
    """The documented error (see ``_errors``) for one of huggingface_hub's."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(exc, LocalEntryNotFoundError):
        cause = exc.__cause__ or exc.__context__
        if _is_network(cause):
            return DownloadConnectionError(f"could not reach {url}: {cause}")
        if isinstance(cause, HfHubHTTPError):
            return _mapped(cause, url, what, has_token)
        return exc
    response = getattr(exc, "response", None)
    if isinstance(exc, HfHubHTTPError) and response is not None:
        return http_error(response.status_code, response.headers, url, what, has_token)
    if isinstance(exc, EntryNotFoundError):
        return FileNotFoundError(f"{what} not found: {exc}")
    if _is_network(exc):
        return DownloadConnectionError(f"could not reach {url}: {exc}")
    if isinstance(exc, OSError) and "onsistency check failed" in str(exc):
        return DownloadConnectionError(f"download of {what} ended early ({exc}); run again to resume")
    return DownloadError(f"download of {what} failed: {exc}")


def _has_token(token: str | bool | None) -> bool:
    if isinstance(token, str):
        return bool(token)
    if token is False:
        return False
    from huggingface_hub import get_token

    return get_token() is not None


def list_files(repo_id: str, revision: str, token: str | bool | None, endpoint: str) -> tuple[str | None, list[str]]:
    """``(commit, files)`` of ``repo_id@revision`` from the Hub's model info."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, token=token)
    except Exception as exc:  # noqa: BLE001 - mapped to the documented errors
        mapped = _mapped(exc, f"{endpoint}/api/models/{repo_id}", f"repository {repo_id}@{revision}",
                         _has_token(token))
        raise mapped from exc
    return info.sha, [s.rfilename for s in (info.siblings or [])]


class _NoProgress:
    """A progress bar that shows nothing (``progress=False``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.n = kwargs.get("initial", 0)

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def fetch(repo_id: str, revision: str, filename: str, root: Path, token: str | bool | None, endpoint: str,
          progress: bool, force: bool) -> Path:
    """``filename`` of ``repo_id@revision`` in the cache ``root``, downloaded when missing or
    out of date (huggingface_hub asks the Hub which commit ``revision`` is, unless offline)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=root, token=token,
                                    endpoint=endpoint, force_download=force,
                                    tqdm_class=None if progress else _NoProgress))  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - mapped to the documented errors
        mapped = _mapped(exc, f"{endpoint}/{repo_id}/resolve/{revision}/{filename}", f"{repo_id}: {filename}",
                         _has_token(token))
        if mapped is exc:
            raise
        raise mapped from exc
