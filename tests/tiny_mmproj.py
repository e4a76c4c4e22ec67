"""A tiny random-weight LLaVA-style ("mlp") projector GGUF, so the multimodal tests run the real
libmtmd path without a vision model (none is small enough to fetch). Its output is noise; what the
tests check is the path: loading, bitmaps, markers, chunk evaluation, positions, KV reuse.

Layout follows the pinned clip.cpp (tools/mtmd/clip.cpp: clip_model_loader::load_hparams /
load_tensors, models/llava.cpp, clip_n_mmproj_embd). Shapes below are numpy shapes; gguf stores
them reversed, so numpy (rows, cols) == ggml ne [cols, rows].

    v.patch_embd.weight       (D, 3, P, P)      conv2d kernel, ggml ne [P, P, 3, D]
    v.patch_embd.bias         (D,)              optional, included
    v.position_embd.weight    (N, D)            N = (S/P)^2 patches, no class token
    v.blk.{i}.ln1/ln2.{weight,bias}   (D,)
    v.blk.{i}.attn_{q,k,v,out}.weight (D, D),  .bias (D,)
    v.blk.{i}.ffn_up.weight   (F, D), bias (F,)   ggml ne [D, F]
    v.blk.{i}.ffn_down.weight (D, F), bias (D,)   ggml ne [F, D]  (ne[0] != D, so no legacy up/down swap)
    mm.0.weight (H, D), mm.0.bias (H,)
    mm.2.weight (E, H), mm.2.bias (E,)          E = text n_embd; clip_n_mmproj_embd() = mm.2.weight ne[1]

Note the llava graph runs only n_layer-1 blocks (the 2nd-to-last layer feeds the projector), so
block_count=2 makes exactly one transformer block execute.
"""
from __future__ import annotations

import numpy as np
import gguf

IMAGE_SIZE = 32
PATCH_SIZE = 8
N_EMBD = 32        # vision hidden size
N_HEAD = 2
N_FF = 64
N_LAYER = 2
PROJ_HIDDEN = 64   # mm.0 output width


def make_mmproj(path, n_embd_text: int = 576, seed: int = 0, *, dtype=np.float32,
                image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE, proj_scale: float = 0.02) -> str:
    """``proj_scale``: the spread of the projection weights; larger makes the image embeddings
    (and so each image's effect on the text model) stronger."""
    path = str(path)
    rng = np.random.default_rng(seed)
    D, F, H, E, L = N_EMBD, N_FF, PROJ_HIDDEN, int(n_embd_text), N_LAYER
    n_pos = (image_size // patch_size) ** 2

    def rnd(*shape, scale=0.02):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    def ones(n):
        return np.ones(n, dtype=np.float32)

    def zeros(n):
        return np.zeros(n, dtype=np.float32)

    w = gguf.GGUFWriter(path, arch="clip")
    w.add_name("cyllama-tiny-mmproj")
    w.add_description("random-weight llava-style projector for tests; not a real model")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", image_size)
    w.add_uint32("clip.vision.patch_size", patch_size)
    w.add_uint32("clip.vision.embedding_length", D)
    w.add_uint32("clip.vision.feed_forward_length", F)
    w.add_uint32("clip.vision.block_count", L)
    w.add_uint32("clip.vision.projection_dim", E)
    w.add_uint32("clip.vision.attention.head_count", N_HEAD)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    # norms/biases stay F32 (ggml binary ops want F32 for the non-matmul operand)
    w.add_tensor("v.patch_embd.weight", rnd(D, 3, patch_size, patch_size))
    w.add_tensor("v.patch_embd.bias", zeros(D))
    w.add_tensor("v.position_embd.weight", rnd(n_pos, D).astype(np.float32))
    for i in range(L):
        p = f"v.blk.{i}"
        w.add_tensor(f"{p}.ln1.weight", ones(D))
        w.add_tensor(f"{p}.ln1.bias", zeros(D))
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"{p}.{t}.weight", rnd(D, D))
            w.add_tensor(f"{p}.{t}.bias", zeros(D))
        w.add_tensor(f"{p}.ln2.weight", ones(D))
        w.add_tensor(f"{p}.ln2.bias", zeros(D))
        w.add_tensor(f"{p}.ffn_up.weight", rnd(F, D))
        w.add_tensor(f"{p}.ffn_up.bias", zeros(F))
        w.add_tensor(f"{p}.ffn_down.weight", rnd(D, F))
        w.add_tensor(f"{p}.ffn_down.bias", zeros(D))
    w.add_tensor("mm.0.weight", rnd(H, D, scale=max(0.02, proj_scale)))
    w.add_tensor("mm.0.bias", zeros(H))
    w.add_tensor("mm.2.weight", rnd(E, H, scale=proj_scale))
    w.add_tensor("mm.2.bias", zeros(E))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_png(path, rgb: np.ndarray) -> str:
    """Minimal 8-bit RGB PNG writer (no PIL)."""
    import struct
    import zlib
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, wd, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", wd, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)
    return str(path)
