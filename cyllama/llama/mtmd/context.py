"""libmtmd (llama.cpp's multimodal library): a projector next to a text model, media bitmaps, and
prompts tokenized into text and media chunks that are evaluated into a :class:`LlamaContext`.

llama.cpp trusts its inputs: a projector file missing a tensor its type uses is read through a
null pointer, a bitmap with the wrong byte count is read past its end. Everything is checked here
before it reaches C (the projector's metadata and tensors, image bytes, bitmap sizes, the number
of media markers against the number of bitmaps).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ..._lazy_numpy import np

from ... import _logging
from ..._errors import ModelLoadError
from ..._ffi import ffi, load_mtmd
from .._backend import default_n_threads, ensure_backend
from .._handle import NativeHandle

if TYPE_CHECKING:
    from ..context import LlamaContext
    from ..model import LlamaModel

__all__ = ["MtmdContext", "MtmdBitmap", "MtmdChunks", "MEDIA_MARKER", "check_projector"]

#: The media marker of this process: random, as llama-server's, so text a user sends cannot contain
#: it and open a media slot of its own.
MEDIA_MARKER = f"<__media_{secrets.token_hex(8)}__>"

CHUNK_TEXT, CHUNK_IMAGE, CHUNK_AUDIO = 0, 1, 2

# tensors a projector type needs that libmtmd loads as optional and then uses unchecked
_REQUIRED_TENSORS = {
    "mlp": ("mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"),
    "mlp_norm": ("mm.0.weight", "mm.0.bias", "mm.3.weight", "mm.3.bias"),
}
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
_AUDIO_MAGIC = (b"RIFF", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"fLaC")
_MAX_MEDIA_BYTES = 64 << 20
_MAX_SIDE = 16384

_mt: Any = None


def _lib() -> Any:
    global _mt
    if _mt is None:
        ensure_backend()
        _mt = load_mtmd()
        _logging.install(_mt, "mtmd_helper_log_set")
    return _mt


def check_projector(path: str | os.PathLike) -> dict[str, Any]:
    """Checks that ``path`` is a projector GGUF libmtmd can load without crashing; returns its
    metadata. Raises ``FileNotFoundError`` or ``ModelLoadError`` naming the problem."""
    from ..gguf import GGUFContext

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"projector file not found: {p}")
    with open(p, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(f"{p} is not a GGUF file")
    try:
        g = GGUFContext.from_file(p)
    except Exception as exc:
        raise ModelLoadError(f"{p} is not a readable GGUF file: {exc}") from None
    try:
        meta = g.get_all_metadata()
        tensors = {t["name"] for t in g.get_tensors()}
    finally:
        g.close()
    if meta.get("general.architecture") != "clip":
        raise ModelLoadError(f"{p} is not a multimodal projector (its architecture is "
                             f"{meta.get('general.architecture')!r}, a projector's is 'clip'): pass the mmproj file")
    if not (meta.get("clip.has_vision_encoder") or meta.get("clip.has_audio_encoder")):
        raise ModelLoadError(f"{p} has neither a vision nor an audio encoder")
    for key in ("clip.projector_type", "clip.vision.projector_type", "clip.audio.projector_type"):
        kind = meta.get(key)
        if isinstance(kind, str):
            missing = [t for t in _REQUIRED_TENSORS.get(kind, ()) if t not in tensors]
            if missing:
                raise ModelLoadError(f"{p}: a {kind!r} projector needs tensors {missing}, which the file lacks")
    return meta


_MAX_PIXELS = 64_000_000


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from an image's header (PNG, GIF, BMP, JPEG), read before decoding it, so a
    small file that decodes to gigabytes is refused first; None when unknown."""
    import struct

    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:2] == b"BM" and len(data) >= 26:
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:3] == b"\xff\xd8\xff":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    return None
                marker = data[i + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    i += 2
                    continue
                seg = struct.unpack(">H", data[i + 2:i + 4])[0]
                if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    h, w = struct.unpack(">HH", data[i + 5:i + 9])
                    return w, h
                i += 2 + seg
    except struct.error:
        return None
    return None


def _media_kind(data: bytes) -> str:
    head = data[:16]
    if any(head.startswith(m) for m in _IMAGE_MAGIC):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if any(head.startswith(m) for m in _AUDIO_MAGIC):
        return "audio"
    return "unknown"


class MtmdBitmap(NativeHandle):
    """An image (RGB pixels) or audio clip (PCM float samples) ready to tokenize. ``id`` keys it
    in the KV cache: the same picture gets the same id, so a later turn reuses its encoding."""

    def __init__(self, ptr: Any, video: Any = None):
        mt = _lib()
        if ptr == ffi.NULL:
            raise ValueError("the media could not be decoded")
        self._adopt(ptr, mt.mtmd_bitmap_free)
        if video is not None and video != ffi.NULL:
            mt.mtmd_helper_video_free(video)

    @classmethod
    def from_rgb(cls, pixels: Any, id: str | None = None) -> "MtmdBitmap":
        """An image from a (height, width, 3) uint8 array."""
        a = np.asarray(pixels)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"an image array must have shape (height, width, 3), got {a.shape}")
        if a.dtype != np.uint8:
            if not np.issubdtype(a.dtype, np.integer) or a.min(initial=0) < 0 or a.max(initial=0) > 255:
                raise ValueError("image pixels must be uint8 (0-255)")
            a = a.astype(np.uint8)
        h, w = int(a.shape[0]), int(a.shape[1])
        if not (0 < h <= _MAX_SIDE and 0 < w <= _MAX_SIDE):
            raise ValueError(f"an image must be between 1x1 and {_MAX_SIDE}x{_MAX_SIDE} pixels, got {w}x{h}")
        a = np.ascontiguousarray(a)
        bm = cls(_lib().mtmd_bitmap_init(w, h, ffi.from_buffer("unsigned char[]", a)))
        bm.id = id or hashlib.sha256(a.tobytes() + f"{w}x{h}".encode()).hexdigest()
        return bm

    @classmethod
    def from_audio(cls, samples: Any, id: str | None = None) -> "MtmdBitmap":
        """An audio clip from mono PCM samples (float, -1..1) at the projector's sample rate."""
        a = np.ascontiguousarray(np.asarray(samples, dtype=np.float32))
        if a.ndim != 1 or a.size == 0:
            raise ValueError("audio must be a non-empty 1-D array of samples")
        if not np.isfinite(a).all():
            raise ValueError("audio samples must be finite")
        bm = cls(_lib().mtmd_bitmap_init_from_audio(a.size, ffi.from_buffer("float[]", a)))
        bm.id = id or hashlib.sha256(a.tobytes()).hexdigest()
        return bm

    @property
    def nx(self) -> int:
        return int(_lib().mtmd_bitmap_get_nx(self.ptr))

    @property
    def ny(self) -> int:
        return int(_lib().mtmd_bitmap_get_ny(self.ptr))

    @property
    def is_audio(self) -> bool:
        return bool(_lib().mtmd_bitmap_is_audio(self.ptr))

    @property
    def id(self) -> str:
        p = _lib().mtmd_bitmap_get_id(self.ptr)
        return ffi.string(p).decode() if p != ffi.NULL else ""

    @id.setter
    def id(self, value: str) -> None:
        _lib().mtmd_bitmap_set_id(self.ptr, str(value).encode())

    def __repr__(self) -> str:
        if self.closed:
            return "<MtmdBitmap (closed)>"
        return f"<MtmdBitmap {'audio' if self.is_audio else f'{self.nx}x{self.ny}'} id={self.id[:12]}>"


class MtmdChunks(NativeHandle):
    """A prompt tokenized into text and media chunks (``mtmd_input_chunks``)."""

    def __init__(self) -> None:
        mt = _lib()
        self._adopt(mt.mtmd_input_chunks_init(), mt.mtmd_input_chunks_free)
        self._bitmaps: list[MtmdBitmap] = []  # the media the chunks were made from (kept alive)

    def __len__(self) -> int:
        return int(_lib().mtmd_input_chunks_size(self.ptr))

    def _chunk(self, i: int) -> Any:
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise IndexError(f"chunk index {i!r} out of range 0..{n - 1}")
        return _lib().mtmd_input_chunks_get(self.ptr, i)

    def kinds(self) -> list[int]:
        """Each chunk's type: 0 text, 1 image, 2 audio."""
        mt = _lib()
        return [int(mt.mtmd_input_chunk_get_type(self._chunk(i))) for i in range(len(self))]

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        """(type, text tokens for a text chunk or the media id for an image/audio chunk) per chunk."""
        mt = _lib()
        for i in range(len(self)):
            c = self._chunk(i)
            kind = int(mt.mtmd_input_chunk_get_type(c))
            if kind == CHUNK_TEXT:
                n = ffi.new("size_t *")
                toks = mt.mtmd_input_chunk_get_tokens_text(c, n)
                yield kind, [int(toks[k]) for k in range(n[0])]
            else:
                cid = mt.mtmd_input_chunk_get_id(c)
                yield kind, ffi.string(cid).decode() if cid != ffi.NULL else ""

    def text_tokens(self) -> list[int]:
        """The tokens of the text chunks, in order (what penalties see of the prompt)."""
        return [t for kind, value in self if kind == CHUNK_TEXT for t in value]

    def n_tokens_of(self, i: int) -> int:
        return int(_lib().mtmd_input_chunk_get_n_tokens(self._chunk(i)))

    def n_pos_of(self, i: int) -> int:
        return int(_lib().mtmd_input_chunk_get_n_pos(self._chunk(i)))

    @property
    def n_tokens(self) -> int:
        return int(_lib().mtmd_helper_get_n_tokens(self.ptr))

    @property
    def n_pos(self) -> int:
        """Positions the chunks take in the context (fewer than tokens on M-RoPE models)."""
        return int(_lib().mtmd_helper_get_n_pos(self.ptr))


class MtmdContext(NativeHandle):
    """A multimodal projector (``mmproj`` GGUF) for ``model``: turns images (and audio, when the
    projector has an audio encoder) into embeddings the text model reads.

    The media marker in prompts is :data:`MEDIA_MARKER` (``ctx.marker``), one per process.
    """

    def __init__(self, mmproj_path: str | os.PathLike, model: "LlamaModel", *, use_gpu: bool = True,
                 n_threads: int | None = None, print_timings: bool = False, warmup: bool = False,
                 image_min_tokens: int = -1, image_max_tokens: int = -1):
        mt = _lib()
        meta = check_projector(mmproj_path)
        self.path = Path(mmproj_path)
        self.model = model
        self.metadata = meta
        self.marker = MEDIA_MARKER
        self._marker_c = ffi.new("char[]", self.marker.encode())
        params = mt.mtmd_context_params_default()
        params.use_gpu = bool(use_gpu)
        params.n_threads = int(n_threads or default_n_threads())
        params.print_timings = bool(print_timings)
        params.warmup = bool(warmup)
        params.media_marker = self._marker_c
        params.image_min_tokens = int(image_min_tokens)
        params.image_max_tokens = int(image_max_tokens)
        before = _logging.log_mark()
        ptr = mt.mtmd_init_from_file(os.fsencode(self.path), model.ptr, params)
        if ptr == ffi.NULL:
            why = "; ".join(_logging.errors_since(before, 3)) or "libmtmd could not load it"
            raise ModelLoadError(f"failed to load the projector {self.path}: {why}")
        self._adopt(ptr, mt.mtmd_free)
        model._dependents.add(self)

    # -- what it can do -------------------------------------------------------------------------
    @property
    def supports_vision(self) -> bool:
        return bool(_lib().mtmd_support_vision(self.ptr))

    @property
    def supports_audio(self) -> bool:
        return bool(_lib().mtmd_support_audio(self.ptr))

    @property
    def audio_sample_rate(self) -> int | None:
        """Samples per second the audio encoder takes (None without audio)."""
        r = int(_lib().mtmd_get_audio_sample_rate(self.ptr))
        return r if r > 0 else None

    @property
    def uses_mrope(self) -> bool:
        """Whether positions advance per image grid (M-RoPE) rather than per token."""
        return bool(_lib().mtmd_decode_use_mrope(self.ptr))

    @property
    def modalities(self) -> list[str]:
        return ["text"] + (["image"] if self.supports_vision else []) + (["audio"] if self.supports_audio else [])

    # -- media ----------------------------------------------------------------------------------
    def bitmap_from_bytes(self, data: bytes) -> MtmdBitmap:
        """An image (PNG, JPEG, GIF, BMP; WebP where ffmpeg is installed) or audio file (WAV, MP3,
        FLAC) given as its bytes. Its id is the bytes' sha256."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"media must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if not data:
            raise ValueError("the media is empty")
        if len(data) > _MAX_MEDIA_BYTES:
            raise ValueError(f"the media is {len(data)} bytes; at most {_MAX_MEDIA_BYTES} are taken")
        kind = _media_kind(data)
        size = _image_size(data)
        if size is not None and (max(size) > _MAX_SIDE or size[0] * size[1] > _MAX_PIXELS):
            raise ValueError(f"the image is {size[0]}x{size[1]} pixels; at most {_MAX_SIDE} a side and "
                             f"{_MAX_PIXELS // 1_000_000} million in all are taken")
        if kind == "unknown":
            raise ValueError("the media is not an image (PNG, JPEG, GIF, BMP, WebP) or audio (WAV, MP3, FLAC) file")
        if kind == "webp" and shutil.which("ffmpeg") is None:
            raise ValueError("WebP images need ffmpeg installed; send PNG or JPEG")
        if kind == "audio" and not self.supports_audio:
            raise ValueError("this projector has no audio encoder: it takes images only")
        if kind in ("image", "webp") and not self.supports_vision:
            raise ValueError("this projector has no vision encoder: it takes audio only")
        mt = _lib()
        before = _logging.log_mark()
        buf = ffi.from_buffer("unsigned char[]", data)
        wrap = mt.mtmd_helper_bitmap_init_from_buf(self.ptr, buf, len(data), False, mt.mtmd_helper_init_opt_default())
        if wrap.bitmap == ffi.NULL:
            why = "; ".join(_logging.errors_since(before, 2))
            raise ValueError(f"the media could not be decoded (corrupt or unsupported){': ' + why if why else ''}")
        bm = MtmdBitmap(wrap.bitmap, wrap.video_ctx)
        if not bm.is_audio and (bm.nx == 0 or bm.ny == 0):
            bm.close()
            raise ValueError("the image has no pixels")
        bm.id = hashlib.sha256(data).hexdigest()
        return bm

    def bitmap_from_file(self, path: str | os.PathLike) -> MtmdBitmap:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"media file not found: {p}")
        if p.stat().st_size > _MAX_MEDIA_BYTES:
            raise ValueError(f"{p} is larger than {_MAX_MEDIA_BYTES} bytes")
        return self.bitmap_from_bytes(p.read_bytes())

    def bitmap(self, media: Any) -> MtmdBitmap:
        """A bitmap from a path, file bytes, an RGB array or an :class:`MtmdBitmap` (kept as is)."""
        if isinstance(media, MtmdBitmap):
            return media
        if isinstance(media, (str, os.PathLike)):
            return self.bitmap_from_file(media)
        if isinstance(media, (bytes, bytearray, memoryview)):
            return self.bitmap_from_bytes(media)
        if isinstance(media, np.ndarray):
            if media.ndim == 1:
                if not self.supports_audio:
                    raise ValueError("this projector has no audio encoder: it takes images only")
                return MtmdBitmap.from_audio(media)
            if not self.supports_vision:
                raise ValueError("this projector has no vision encoder: it takes audio only")
            return MtmdBitmap.from_rgb(media)
        raise TypeError(f"media must be a path, bytes, a numpy array or an MtmdBitmap, got {type(media).__name__}")

    # -- prompts --------------------------------------------------------------------------------
    def tokenize(self, text: str, bitmaps: Sequence[MtmdBitmap] = (), *, add_special: bool = True,
                 parse_special: bool = True) -> MtmdChunks:
        """``text`` with one :attr:`marker` per bitmap, in order, as text and media chunks."""
        if not isinstance(text, str):
            raise TypeError("text must be a string")
        bitmaps = list(bitmaps)
        n_markers = text.count(self.marker)
        if n_markers != len(bitmaps):
            raise ValueError(f"the prompt has {n_markers} media markers but {len(bitmaps)} media were given")
        for b in bitmaps:
            if not isinstance(b, MtmdBitmap):
                raise TypeError(f"bitmaps must be MtmdBitmap objects, got {type(b).__name__}")
            if b.is_audio and not self.supports_audio:
                raise ValueError("this projector has no audio encoder: it takes images only")
            if not b.is_audio and not self.supports_vision:
                raise ValueError("this projector has no vision encoder: it takes audio only")
        mt = _lib()
        chunks = MtmdChunks()
        raw = text.encode("utf-8")
        buf = ffi.new("char[]", raw)
        inp = ffi.new("mtmd_input_text *")
        inp.text, inp.text_len, inp.add_special, inp.parse_special = buf, len(raw), add_special, parse_special
        arr = ffi.new("mtmd_bitmap *[]", [b.ptr for b in bitmaps]) if bitmaps else ffi.NULL
        before = _logging.log_mark()
        rc = mt.mtmd_tokenize(self.ptr, chunks.ptr, inp, arr, len(bitmaps))
        if rc != 0:
            chunks.close()
            why = "; ".join(_logging.errors_since(before, 2))
            raise ValueError(f"the prompt could not be tokenized with its media (code {rc}){': ' + why if why else ''}")
        chunks._bitmaps = bitmaps
        return chunks

    def eval_chunk(self, ctx: "LlamaContext", chunks: MtmdChunks, i: int, n_past: int, seq_id: int = 0) -> int:
        """Encodes media chunk ``i`` into ``ctx`` at position ``n_past``; returns the next position.
        No logits come out of media: a prompt goes on with text after it (decoded as tokens).
        Raises ``ValueError`` when it does not fit the context or the encoder fails."""
        mt = _lib()
        if ctx.model is not self.model:
            raise ValueError("the context belongs to another model than the projector's")
        chunk = chunks._chunk(i)
        if int(mt.mtmd_input_chunk_get_type(chunk)) == CHUNK_TEXT:
            raise ValueError("text chunks are decoded as tokens (eval_prompt), not through eval_chunk")
        n_tok = chunks.n_tokens_of(i)
        if mt.mtmd_decode_use_non_causal(self.ptr, chunk) and n_tok > min(ctx.n_batch, ctx.n_ubatch):
            # llama.cpp aborts when a non-causal batch does not fit one micro-batch
            raise ValueError(f"this projector's images ({n_tok} embeddings) must fit one batch: use "
                             f"n_batch and n_ubatch >= {n_tok} (the context has {ctx.n_batch}/{ctx.n_ubatch})")
        need = chunks.n_pos_of(i)
        if n_past + need > ctx.n_ctx:
            raise ValueError(f"the media needs {need} positions after {n_past}, but the context holds {ctx.n_ctx}")
        out = ffi.new("llama_pos *")
        before = _logging.log_mark()
        mptr, cptr = self.ptr, ctx.ptr
        rc = ctx._decode_outside(lambda: mt.mtmd_helper_eval_chunk_single(
            mptr, cptr, chunk, n_past, seq_id, ctx.n_batch, False, out), False)
        if rc != 0:
            why = "; ".join(_logging.errors_since(before, 2))
            raise ValueError(f"evaluating the media failed (code {rc}){': ' + why if why else ''}")
        return int(out[0])

    def __repr__(self) -> str:
        if self.closed:
            return "<MtmdContext (closed)>"
        return f"<MtmdContext {self.path.name} {'+'.join(self.modalities)}>"
