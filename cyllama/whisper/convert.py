"""Convert a CTranslate2 Whisper model into whisper.cpp's ggml model format.

Only numpy and the standard library are needed.  Format facts relied on:

CTranslate2 ``model.bin`` (binary versions 4 to 6, written by
``ctranslate2/specs/model_spec.py``; all integers little-endian):
    u32 binary_version; [v>=2] string spec_name, u32 spec_revision;
    u32 n_variables, then per variable: string name, u8 rank, u32 dims[rank],
    u8 type_id (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16), u32 n_bytes, data;
    [v>=3] u32 n_aliases, then per alias: string alias, string target.
    A string is u16 length (including a trailing NUL) followed by the bytes.
    Quantized weights (i8/i16) have a ``<name>_scale`` variable; the float
    value is ``q / scale`` (per row for i8, one scalar for i16).

CTranslate2 Whisper spec (``WhisperSpec``): linear weights are [out, in] like
PyTorch; self-attention Q/K/V are fused in ``linear_0`` (in that order) and
cross-attention K/V in ``attention/linear_1``; the key bias slice is zero
(Whisper's key projection has no bias, nor does whisper.cpp); positional
encodings of both encoder and decoder are stored; the output projection is an
alias of the token embedding; ``vocabulary.txt`` holds one GPT-2 byte-level
token per line (specials such as ``<|endoftext|>`` included).

whisper.cpp ggml file (``models/convert-pt-to-ggml.py``, ``whisper_model_load``):
    i32 magic 0x67676d6c; i32 n_vocab, n_audio_ctx, n_audio_state, n_audio_head,
    n_audio_layer, n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels,
    ftype (1 = f16); i32 n_mel, n_fft then f32 mel filters [n_mel][n_fft];
    i32 n_tokens then (i32 len, raw bytes) per regular token (the special
    tokens from ``<|endoftext|>`` on are synthesized by whisper.cpp); then per
    tensor: i32 n_dims, i32 name_len, i32 ttype (0 f32, 1 f16), i32 ne[n_dims]
    (innermost first, i.e. the numpy shape reversed), name, data.  Matrices
    and conv kernels are f16, everything else f32 (conv biases as [n, 1]).
    The loader checks every tensor's size against that type, so f16/f32
    cannot be chosen freely.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

GGML_MAGIC = 0x67676D6C
SAMPLE_RATE = 16000
N_FFT = 400

_CT2_DTYPES = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "<u2"}  # 5 = bfloat16


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the inverse decodes tokens)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_ct2_variables(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 model.bin; return (spec name, arrays by name, dequantized)."""
    buf = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    def take_string() -> str:
        nonlocal pos
        (n,) = take("H")
        raw = buf[pos : pos + n]
        pos += n
        return raw.split(b"\0", 1)[0].decode("utf-8")

    try:
        (version,) = take("I")
        if not 4 <= version <= 6:
            raise ValueError(f"{path}: not a CTranslate2 model.bin of binary version 4 to 6 (got {version})")
        spec = take_string()
        take("I")  # spec revision
        (n_vars,) = take("I")
        raw: dict[str, np.ndarray] = {}
        for _ in range(n_vars):
            name = take_string()
            (rank,) = take("B")
            shape = take(f"{rank}I") if rank else ()
            type_id, n_bytes = take("BI")
            if type_id not in _CT2_DTYPES:
                raise ValueError(f"variable {name!r} has unknown CTranslate2 type id {type_id}")
            if pos + n_bytes > len(buf):
                raise struct.error(f"variable {name!r} runs past the end of the file")
            dtype = np.dtype(_CT2_DTYPES[type_id])
            arr = np.frombuffer(buf, dtype=dtype, count=n_bytes // dtype.itemsize, offset=pos)
            pos += n_bytes
            if type_id == 5:
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            raw[name] = arr.reshape(shape)
        (n_aliases,) = take("I")
        aliases = [(take_string(), take_string()) for _ in range(n_aliases)]
    except struct.error as exc:
        raise ValueError(f"{path} is truncated or not a CTranslate2 model.bin: {exc}") from None

    for alias, target in aliases:
        if target in raw:
            raw[alias] = raw[target]
    variables: dict[str, np.ndarray] = {}
    for name, arr in raw.items():
        if name.endswith("_scale"):
            continue
        scale = raw.get(name + "_scale")
        if scale is not None and arr.dtype.kind == "i":
            scale = scale.astype(np.float32)
            arr = arr.astype(np.float32) / (scale[:, None] if scale.ndim == 1 else scale)
        variables[name] = arr
    return spec, variables


def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney mel filterbank as librosa.filters.mel(sr, n_fft, n_mels) builds it (Whisper's asset)."""
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0

    def hz_to_mel(f: float) -> float:
        return min_log_mel + np.log(f / min_log_hz) / logstep if f >= min_log_hz else f / f_sp

    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2)
    mel_f = np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, n_fft // 2 + 1), dtype=np.float32)
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    # librosa rounds to float32 before normalizing, then again after; do the same.
    weights *= 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])[:, None]
    return weights


def _regular_tokens(vocab_path: Path) -> list[bytes]:
    """Tokens before the first special ``<|...|>`` one, decoded from GPT-2 byte-level text."""
    decoder = {c: b for b, c in _bytes_to_unicode().items()}
    # split("\n"), not splitlines(): the latter also breaks on characters such as U+2028.
    lines = vocab_path.read_text(encoding="utf-8").split("\n")
    tokens: list[bytes] = []
    for line in lines:
        if line.startswith("<|") and line.endswith("|>"):
            break
        try:
            tokens.append(bytes(decoder[c] for c in line))
        except KeyError:
            raise ValueError(f"{vocab_path}: token {line!r} is not GPT-2 byte-level text") from None
    return tokens


def _linear_tensors(v: dict[str, np.ndarray], src: str, dst: str) -> list[tuple[str, np.ndarray]]:
    return [(f"{dst}.weight", v[f"{src}/weight"]), (f"{dst}.bias", v[f"{src}/bias"])]


def _norm_tensors(v: dict[str, np.ndarray], src: str, dst: str) -> list[tuple[str, np.ndarray]]:
    return [(f"{dst}.weight", v[f"{src}/gamma"]), (f"{dst}.bias", v[f"{src}/beta"])]


def _split_attention(v: dict[str, np.ndarray], src: str, dst: str, parts: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """Unfuse a CT2 projection into whisper's query/key/value, dropping the (zero) key bias."""
    weights = np.split(v[f"{src}/weight"], len(parts))
    biases = np.split(v[f"{src}/bias"], len(parts))
    out = []
    for part, w, b in zip(parts, weights, biases):
        out.append((f"{dst}.{part}.weight", w))
        if part != "key":
            out.append((f"{dst}.{part}.bias", b))
        elif np.any(b != 0):
            raise ValueError(f"{src}: non-zero key bias cannot be represented in whisper.cpp")
    return out


def _whisper_tensors(v: dict[str, np.ndarray], n_enc: int, n_dec: int) -> list[tuple[str, np.ndarray]]:
    t: list[tuple[str, np.ndarray]] = [
        ("encoder.positional_embedding", v["encoder/position_encodings/encodings"]),
        *_linear_tensors(v, "encoder/conv1", "encoder.conv1"),
        *_linear_tensors(v, "encoder/conv2", "encoder.conv2"),
    ]
    for i in range(n_enc):
        s, d = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        t += _norm_tensors(v, f"{s}/self_attention/layer_norm", f"{d}.attn_ln")
        t += _split_attention(v, f"{s}/self_attention/linear_0", f"{d}.attn", ("query", "key", "value"))
        t += _linear_tensors(v, f"{s}/self_attention/linear_1", f"{d}.attn.out")
        t += _norm_tensors(v, f"{s}/ffn/layer_norm", f"{d}.mlp_ln")
        t += _linear_tensors(v, f"{s}/ffn/linear_0", f"{d}.mlp.0")
        t += _linear_tensors(v, f"{s}/ffn/linear_1", f"{d}.mlp.2")
    t += _norm_tensors(v, "encoder/layer_norm", "encoder.ln_post")
    t += [
        ("decoder.positional_embedding", v["decoder/position_encodings/encodings"]),
        ("decoder.token_embedding.weight", v["decoder/embeddings/weight"]),
    ]
    for i in range(n_dec):
        s, d = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        t += _norm_tensors(v, f"{s}/self_attention/layer_norm", f"{d}.attn_ln")
        t += _split_attention(v, f"{s}/self_attention/linear_0", f"{d}.attn", ("query", "key", "value"))
        t += _linear_tensors(v, f"{s}/self_attention/linear_1", f"{d}.attn.out")
        t += _norm_tensors(v, f"{s}/attention/layer_norm", f"{d}.cross_attn_ln")
        t += _linear_tensors(v, f"{s}/attention/linear_0", f"{d}.cross_attn.query")
        t += _split_attention(v, f"{s}/attention/linear_1", f"{d}.cross_attn", ("key", "value"))
        t += _linear_tensors(v, f"{s}/attention/linear_2", f"{d}.cross_attn.out")
        t += _norm_tensors(v, f"{s}/ffn/layer_norm", f"{d}.mlp_ln")
        t += _linear_tensors(v, f"{s}/ffn/linear_0", f"{d}.mlp.0")
        t += _linear_tensors(v, f"{s}/ffn/linear_1", f"{d}.mlp.2")
    t += _norm_tensors(v, "decoder/layer_norm", "decoder.ln")
    return t


def write_tensor_record(f: BinaryIO, name: str, data: np.ndarray, f16: bool) -> None:
    """One tensor of a whisper.cpp ggml file (the model's and the VAD model's): dimension count,
    name length, type (1 f16, 0 f32), the shape innermost first, the name, the data."""
    encoded = name.encode("utf-8")
    f.write(struct.pack(f"<3i{data.ndim}i", data.ndim, len(encoded), 1 if f16 else 0, *reversed(data.shape)))
    f.write(encoded)
    f.write(data.tobytes())


@contextmanager
def atomic_output(out_path: Path) -> Iterator[BinaryIO]:
    """A file to write ``out_path`` through: a temporary file in the same folder, moved into place
    (mode 0644) only when the block ends without an exception, removed otherwise."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600
        os.replace(tmp_name, out_path)
    except BaseException:
        os.unlink(tmp_name)
        raise


def _write_tensor(f: BinaryIO, name: str, data: np.ndarray) -> None:
    if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
        data = data.reshape(-1, 1)
    # Positional embeddings are matrices but whisper.cpp wants them in f32.
    use_f16 = data.ndim >= 2 and not name.endswith(("positional_embedding", ".bias"))
    write_tensor_record(f, name, np.ascontiguousarray(data, dtype="<f2" if use_f16 else "<f4"), use_f16)


def convert_ct2_to_ggml(model_dir: str | Path, out_path: str | Path) -> Path:
    """Convert the CTranslate2 Whisper model in ``model_dir`` to a ggml f16 file at ``out_path``."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    missing = [n for n in ("config.json", "model.bin", "vocabulary.txt") if not (model_dir / n).is_file()]
    if missing:
        raise ValueError(f"{model_dir} is not a CTranslate2 Whisper model folder (missing {', '.join(missing)})")
    spec, v = read_ct2_variables(model_dir / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{model_dir} holds a CTranslate2 {spec or 'unnamed'} model, not WhisperSpec")
    json.loads((model_dir / "config.json").read_text(encoding="utf-8"))  # must at least be valid

    def n_layers(prefix: str) -> int:
        return sum(1 for k in v if k.startswith(prefix) and k.endswith("/ffn/linear_0/weight"))

    try:
        n_vocab, n_text_state = v["decoder/embeddings/weight"].shape
        n_audio_ctx, n_audio_state = v["encoder/position_encodings/encodings"].shape
        n_text_ctx = v["decoder/position_encodings/encodings"].shape[0]
        n_mels = v["encoder/conv1/weight"].shape[1]
        n_audio_head = int(v["encoder/num_heads"])
        n_text_head = int(v["decoder/num_heads"])
        n_enc, n_dec = n_layers("encoder/layer_"), n_layers("decoder/layer_")
        tensors = _whisper_tensors(v, n_enc, n_dec)
    except KeyError as exc:
        raise ValueError(f"{model_dir}/model.bin lacks Whisper variable {exc}") from None

    tokens = _regular_tokens(model_dir / "vocabulary.txt")
    filters = mel_filters(n_mels)
    hparams = (n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_enc,
               n_text_ctx, n_text_state, n_text_head, n_dec, n_mels, 1)

    with atomic_output(out_path) as f:
        f.write(struct.pack("<I11i", GGML_MAGIC, *map(int, hparams)))
        f.write(struct.pack("<ii", *filters.shape))
        f.write(filters.astype("<f4").tobytes())
        f.write(struct.pack("<i", len(tokens)))
        for tok in tokens:
            f.write(struct.pack("<i", len(tok)))
            f.write(tok)
        for name, data in tensors:
            _write_tensor(f, name, data)
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] in ("-h", "--help"):
        print("usage: python -m cyllama.whisper.convert CT2_MODEL_DIR OUT.bin", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        out = convert_ct2_to_ggml(args[0], args[1])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
