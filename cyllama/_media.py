"""Images and audio in chat messages (OpenAI content parts), for every entry point.

``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` and
``{"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}`` parts are
replaced by the projector's media marker in the message text, and their media collected in order,
so the model's own chat template renders the conversation (no per-family handlers) and libmtmd
puts each image where its marker is.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["has_media", "split_media", "media_bytes"]

MEDIA_PARTS = ("image_url", "input_image", "image", "input_audio")
MAX_MEDIA_BYTES = 64 << 20


def has_media(messages: Sequence[Any]) -> bool:
    """Whether any message has an image or audio content part."""
    for m in messages:
        content = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(content, (list, tuple)):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") in MEDIA_PARTS:
                    return True
    return False


def split_media(messages: Sequence[Mapping[str, Any]], marker: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """Messages with each media part replaced by ``marker`` (parts joined with newlines), and the
    media sources in order: what :func:`media_bytes` takes."""
    out: list[dict[str, Any]] = []
    media: list[Any] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        m = dict(m)
        content = m.get("content")
        if isinstance(content, (list, tuple)):
            pieces = []
            for j, part in enumerate(content):
                if not isinstance(part, Mapping):
                    raise ValueError(f"messages[{i}].content[{j}] must be a content part dict")
                kind = part.get("type")
                if kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise ValueError(f"messages[{i}].content[{j}]: a text part needs a string 'text'")
                    pieces.append(text)
                elif kind in ("image_url", "input_image", "image"):
                    src = part.get(kind) if kind != "input_image" else part.get("image_url")
                    if isinstance(src, Mapping):
                        src = src.get("url")
                    if not isinstance(src, str) or not src:
                        raise ValueError(f"messages[{i}].content[{j}]: an image part needs a URL "
                                         '({"type": "image_url", "image_url": {"url": ...}})')
                    media.append(("image", src))
                    pieces.append(marker)
                elif kind == "input_audio":
                    a = part.get("input_audio")
                    if not isinstance(a, Mapping) or not isinstance(a.get("data"), str):
                        raise ValueError(f"messages[{i}].content[{j}]: an input_audio part needs "
                                         '{"data": <base64>, "format": "wav" | "mp3"}')
                    media.append(("audio", a["data"]))
                    pieces.append(marker)
                else:
                    raise ValueError(f"messages[{i}].content[{j}] has an unknown part type {kind!r}")
            m["content"] = "\n".join(pieces)
        elif isinstance(content, str) and marker in content:
            raise ValueError(f"messages[{i}] contains the media marker in its text")
        out.append(m)
    return out, media


URL_TIMEOUT = 15.0  # seconds for a whole image download


def media_bytes(source: tuple[str, str], *, allow_files: bool, allow_urls: bool = False) -> bytes | str:
    """The bytes of a media source from :func:`split_media`: a ``data:`` URL or base64 audio; with
    ``allow_files`` also a local path or ``file://`` URL (returned as the path); with
    ``allow_urls`` an http(s) URL, downloaded with a size and time limit."""
    kind, src = source
    if kind == "audio":
        return _b64(src, "input_audio data")
    if src.startswith("data:"):
        head, sep, payload = src.partition(",")
        if not sep or ";base64" not in head:
            raise ValueError("an image data URL must be base64: data:image/png;base64,...")
        return _b64(payload, "the image data URL")
    if src.startswith(("http://", "https://")):
        if not allow_urls:
            raise ValueError("image URLs are not fetched (a server needs --allow-image-urls): send the image "
                             "as a data: URL (base64)")
        return fetch_url(src)
    if not allow_files:
        raise ValueError("images must be sent as data: URLs (base64)")
    path = src[len("file://"):] if src.startswith("file://") else src
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    return str(p)


def _b64(text: str, what: str) -> bytes:
    if len(text) > MAX_MEDIA_BYTES * 4 // 3 + 4:
        raise ValueError(f"{what} is larger than {MAX_MEDIA_BYTES} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if not data:
        raise ValueError(f"{what} is empty")
    return data


def fetch_url(url: str, *, limit: int = MAX_MEDIA_BYTES, timeout: float = URL_TIMEOUT) -> bytes:
    """Downloads ``url`` (http or https), at most ``limit`` bytes and ``timeout`` seconds in all."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    req = urllib.request.Request(url, headers={"User-Agent": "cyllama"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (http/https checked above)
            size = r.headers.get("Content-Length")
            if size is not None and size.isdigit() and int(size) > limit:
                raise ValueError(f"the image at {url} is {size} bytes; at most {limit} are taken")
            parts, n = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise ValueError(f"downloading {url} took longer than {timeout:.0f} s")
                block = r.read(1 << 16)
                if not block:
                    break
                n += len(block)
                if n > limit:
                    raise ValueError(f"the image at {url} is larger than {limit} bytes")
                parts.append(block)
    except (urllib.error.URLError, OSError) as exc:
        raise ValueError(f"could not download {url}: {exc}") from None
    data = b"".join(parts)
    if not data:
        raise ValueError(f"{url} returned no data")
    return data
