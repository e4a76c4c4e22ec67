"""Names: repository ids, Ollama-style tags, file names and revisions, checked so that no name
can lead a download outside its cache; and the choice of a GGUF file for a tag."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Iterable

__all__ = ["parse_hf_repo", "parse_repo_id", "select_gguf", "glob_select", "safe_relpath", "check_revision",
           "contained", "split_set", "split_info", "quant", "is_glob"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])(I?Q\d+(?:_[A-Za-z0-9]+)*|BF16|F16|F32|FP16|FP32|MXFP4(?:_MOE)?|TQ\d_\d)(?![A-Za-z0-9])",
    re.IGNORECASE)
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# After the tag's own text, which variant a short tag ("q4") prefers.
_VARIANT_ORDER = ("_K_M", "_K_S", "_0", "_K_L", "_1", "_K", "_K_XL", "_NL", "_XS", "_M", "_S")


def _check_name(part: str, what: str) -> str:
    # '--' separates owner and name in the Hugging Face cache's folder names, so the Hub forbids it.
    if not isinstance(part, str) or not _NAME_RE.match(part) or ".." in part or "--" in part:
        raise ValueError(f"invalid {what} {part!r}: use letters, digits, '.', '_' and '-' "
                         "(starting with a letter or digit, no '..' or '--')")
    return part


def parse_repo_id(repo_id: str) -> tuple[str, str]:
    """``"user/model"`` → ``(user, model)``, both checked; ValueError otherwise."""
    if not isinstance(repo_id, str):
        raise TypeError(f"repo id must be a string, got {type(repo_id).__name__}")
    parts = repo_id.strip().split("/")
    if len(parts) != 2:
        raise ValueError(f"invalid Hugging Face repo {repo_id!r}: expected 'user/model'")
    return _check_name(parts[0], "repo owner"), _check_name(parts[1], "repo name")


def parse_hf_repo(spec: str) -> tuple[str, str, str | None]:
    """``"user/model:tag"`` → ``(user, model, tag)``; the tag is None when absent."""
    if not isinstance(spec, str):
        raise TypeError(f"hf_repo must be a string, got {type(spec).__name__}")
    repo, sep, tag = spec.strip().partition(":")
    user, model = parse_repo_id(repo)
    tag = tag.strip() if sep else None
    if tag is not None:
        if not tag:
            tag = None
        elif "\x00" in tag or "/" in tag or "\\" in tag:
            raise ValueError(f"invalid tag {tag!r}")
    return user, model, tag


def safe_relpath(name: str, what: str = "file name") -> str:
    """A repo-relative path that cannot leave the folder it is joined to; ValueError otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid {what}: {name!r}")
    if "\x00" in name or "\\" in name:
        raise ValueError(f"invalid {what} {name!r}: NUL and backslashes are not allowed")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or name.startswith("~"):
        raise ValueError(f"invalid {what} {name!r}: absolute paths are not allowed")
    parts = name.split("/")
    for p in parts:
        if p in ("", ".", ".."):
            raise ValueError(f"invalid {what} {name!r}: empty, '.' and '..' path parts are not allowed")
        if any(ord(c) < 32 or ord(c) == 127 for c in p):
            raise ValueError(f"invalid {what} {name!r}: control characters are not allowed")
    return "/".join(parts)


def check_revision(revision: str) -> str:
    """A branch, tag or commit name usable as ``refs/<revision>`` inside a cache folder."""
    if not isinstance(revision, str) or not revision:
        raise ValueError(f"invalid revision {revision!r}")
    try:
        return safe_relpath(revision, "revision")
    except ValueError:
        raise ValueError(f"invalid revision {revision!r}") from None


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def contained(root: Path, rel: str) -> Path:
    """``root / rel`` with its folder resolved, refusing anything that ends up outside ``root``.
    The last part is not resolved: in the Hugging Face cache it is a link to a blob."""
    root_r = root.resolve()
    joined = root_r / rel
    if joined.name in ("", ".", ".."):
        raise ValueError(f"refusing to write {rel!r}: not a file name")
    target = joined.parent.resolve() / joined.name
    if target == root_r or not target.is_relative_to(root_r):
        raise ValueError(f"refusing to write {rel!r} outside {root}")
    return target


def quant(filename: str) -> str | None:
    """The quantization a GGUF file name announces (``Q4_K_M``), or None."""
    base = _SPLIT_RE.sub(".gguf", filename.rsplit("/", 1)[-1])
    if base.lower().endswith(".gguf"):
        base = base[:-5]
    found = _QUANT_RE.findall(base)
    return found[-1].upper() if found else None


def _is_mmproj(filename: str) -> bool:
    return "mmproj" in filename.rsplit("/", 1)[-1].lower()


def split_info(filename: str) -> tuple[int, int] | None:
    """``(shard, total)`` for a split GGUF's shard, else None."""
    m = _SPLIT_RE.search(filename)
    return (int(m.group(1)), int(m.group(2))) if m else None


def split_set(filename: str) -> list[str]:
    """All shards of a split GGUF, given any one of them (or ``[filename]``)."""
    m = _SPLIT_RE.search(filename)
    if not m:
        return [filename]
    prefix = filename[:m.start()]
    return [f"{prefix}-{i:05d}-of-{m.group(2)}.gguf" for i in range(1, int(m.group(2)) + 1)]


def split_base(filename: str) -> str:
    """A file name without its ``-00001-of-00003`` shard suffix."""
    return _SPLIT_RE.sub(".gguf", filename)


def _variant_rank(q: str, tag: str) -> int:
    rest = q[len(tag):]
    return _VARIANT_ORDER.index(rest) if rest in _VARIANT_ORDER else len(_VARIANT_ORDER)


def select_gguf(files: Iterable[str], tag: str | None = None, *, repo: str = "the repository") -> str:
    """Picks the model file for an Ollama-style tag from a repo's file list.

    No tag (or ``latest``): Q4_K_M if there is one, else the first .gguf. A tag that names a
    quantization (``q4_k_m``, ``Q8_0``, case-insensitive) picks that file; a shorter one (``q4``)
    picks the best variant (Q4_K_M, Q4_K_S, Q4_0, ...); a tag ending in ``.gguf`` names the file;
    otherwise a file whose name contains the tag. Projector (mmproj) files and shards other than
    the first of a split model are never picked. Raises FileNotFoundError when nothing matches.
    """
    files = sorted(set(files))
    cands = [f for f in files if f.lower().endswith(".gguf") and not _is_mmproj(f)
             and (split_info(f) is None or split_info(f)[0] == 1)]
    if not cands:
        raise FileNotFoundError(f"no .gguf model file in {repo}")
    if tag is None or tag.strip().lower() in ("", "latest", "default"):
        return next((f for f in cands if quant(f) == "Q4_K_M"), cands[0])
    if tag.lower().endswith(".gguf"):
        for exact in (True, False):
            for f in files:
                names = (f, f.rsplit("/", 1)[-1])
                if (tag in names) if exact else (tag.lower() in (n.lower() for n in names)):
                    return split_set(f)[0]
        raise FileNotFoundError(f"no file named {tag!r} in {repo}")
    t = tag.strip().upper()
    by_len = lambda f: (len(f), f)  # noqa: E731 - the shortest (top-level, plainest) name wins ties
    exact_q = [f for f in cands if quant(f) == t]
    if exact_q:
        return min(exact_q, key=by_len)
    prefix = [f for f in cands if (quant(f) or "").startswith(t + "_")]
    if prefix:
        return min(prefix, key=lambda f: (_variant_rank(quant(f) or "", t), *by_len(f)))
    contains = [f for f in cands if t in f.rsplit("/", 1)[-1].upper()]
    if contains:
        return min(contains, key=by_len)
    tags = sorted({q for q in map(quant, cands) if q})
    raise FileNotFoundError(f"no model file for tag {tag!r} in {repo}; available: {', '.join(tags) or 'none'} "
                            f"(files: {', '.join(cands[:20])})")


def glob_select(files: Iterable[str], pattern: str, repo: str) -> str:
    """The one file (or split model, by its first shard) matching ``pattern``: case-sensitively
    first, then case-insensitively. FileNotFoundError when none, ValueError when several."""
    files = sorted(set(files))
    matches = [f for f in files if fnmatch.fnmatchcase(f, pattern)]
    if not matches:  # "*q4_0.gguf" should find "...Q4_0.gguf"
        matches = [f for f in files if fnmatch.fnmatchcase(f.lower(), pattern.lower())]
    if not matches:
        ggufs = [f for f in files if f.lower().endswith(".gguf")]
        raise FileNotFoundError(f"no file in {repo} matches {pattern!r}"
                                + (f"; .gguf files: {', '.join(ggufs[:20])}" if ggufs else ""))
    firsts = sorted({split_set(f)[0] for f in matches})
    if len(firsts) > 1:
        raise ValueError(f"{pattern!r} matches several files in {repo}: {', '.join(firsts[:20])}; "
                         "use a more specific pattern")
    return firsts[0]
