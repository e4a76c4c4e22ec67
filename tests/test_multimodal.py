"""Multimodal input through the real libmtmd, with a tiny random-weight projector built here (no
vision model is small enough to fetch): loading and checking projectors, bitmaps, the media
marker, chunk evaluation and positions, KV reuse of an image across turns, every entry point
(LLM.chat, the in-process client, the server), and bad input that must never crash the process.
A real vision model runs when CYLLAMA_TEST_VLM=MODEL.gguf:MMPROJ.gguf is set, against the built
llama-mtmd-cli."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")

from cyllama import LLM, LlamaContext, LlamaContextParams  # noqa: E402
from cyllama._generation import media_units  # noqa: E402
from cyllama.llama.mtmd import MEDIA_MARKER, MtmdBitmap, MtmdContext, load_mmproj, process_image  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from tiny_mmproj import make_mmproj, write_png  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mm")
    # proj_scale: embeddings strong enough that two pictures lead the model to clearly different tokens
    out = {"mmproj": make_mmproj(d / "tiny-mmproj.gguf", 576, proj_scale=0.5),
           "narrow": make_mmproj(d / "narrow.gguf", 512)}
    y, x = np.mgrid[0:48, 0:64]
    out["png"] = write_png(d / "a.png", np.stack([x * 4, y * 5, (x + y) * 2], -1) % 256)
    out["png2"] = write_png(d / "b.png", np.stack([y * 3, x * 2, 255 - x], -1) % 256)
    data = Path(out["png"]).read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 2])
    out["cut"] = str(d / "cut.png")
    (d / "notes.txt").write_text("not an image at all")
    out["txt"] = str(d / "notes.txt")
    return {k: str(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def mm(model, files):
    m = MtmdContext(files["mmproj"], model, use_gpu=False)
    yield m
    m.close()


def data_url(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def image_msg(path_or_url: str, text: str = "Describe this image.") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": path_or_url}},
                                         {"type": "text", "text": text}]}]


# -- the core ------------------------------------------------------------------------------------------
def test_projector_context(mm) -> None:
    assert mm.supports_vision and not mm.supports_audio and mm.audio_sample_rate is None
    assert mm.modalities == ["text", "image"] and not mm.uses_mrope
    assert mm.marker == MEDIA_MARKER and MEDIA_MARKER != "<__media__>"  # random per process


def test_bitmaps_from_file_bytes_and_array_share_ids(mm, files) -> None:
    a = mm.bitmap(files["png"])
    b = mm.bitmap(Path(files["png"]).read_bytes())
    assert (a.nx, a.ny) == (64, 48) and not a.is_audio and a.id == b.id  # the file's sha256
    px = np.zeros((5, 7, 3), dtype=np.uint8)
    c = MtmdBitmap.from_rgb(px)
    assert (c.nx, c.ny) == (7, 5) and c.id == MtmdBitmap.from_rgb(px.copy()).id != a.id
    for x in (a, b, c):
        x.close()


def test_tokenize_places_the_image_at_its_marker(mm, files) -> None:
    bm = mm.bitmap(files["png"])
    chunks = mm.tokenize(f"<|im_start|>user\n{mm.marker}\nDescribe.<|im_end|>\n<|im_start|>assistant\n", [bm])
    try:
        assert chunks.kinds() == [0, 1, 0]
        n_img = chunks.n_tokens_of(1)
        assert n_img == 16 and chunks.n_pos == chunks.n_tokens  # (32 / 8)^2 patches; not M-RoPE
        units, bounds = media_units(chunks)
        assert len(units) == chunks.n_tokens and all(u < 0 for u in units[bounds[1][0]:bounds[1][1]])
        assert len(set(units[bounds[1][0]:bounds[1][1]])) == 1
    finally:
        chunks.close()
        bm.close()


def test_chunk_indexes_and_oversized_images_are_refused(mm, files) -> None:
    import struct
    import zlib

    bm = mm.bitmap(files["png"])
    chunks = mm.tokenize(f"a {mm.marker} b", [bm])
    try:
        for bad in (3, -1, 99):  # libmtmd would read a NULL chunk
            with pytest.raises(IndexError):
                chunks.n_tokens_of(bad)
    finally:
        chunks.close()
        bm.close()
    # a few hundred bytes that would decode to 1.6 GB: refused from the header, before decoding
    def png_chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    bomb = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + png_chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="pixels"):
        mm.bitmap(bomb)


def test_process_image_evaluates_into_the_context(model, files) -> None:
    mmproj = load_mmproj(files["mmproj"], use_gpu=False)
    ctx = LlamaContext(model, LlamaContextParams(n_ctx=256))
    try:
        e = process_image(ctx=ctx, image_path=files["png"], mmproj=mmproj)
        assert (e.n_image_pos, e.n_tokens, e.n_past) == (16, 16, 16)
        assert ctx.kv_cache_seq_pos_max(0) == 15
        e2 = process_image(ctx=ctx, image_path=files["png2"], mmproj=mmproj)  # appended after the first
        assert e2.n_past == 32 and e2.image_id != e.image_id
        with pytest.raises(ValueError, match="no outputs"):  # media leave no logits: text must follow
            ctx.get_logits_ith(-1)
    finally:
        ctx.close()
        mmproj.close()


# -- the high level: LLM.chat with image parts --------------------------------------------------------------
@pytest.fixture(scope="module")
def vlm(model_path, files):
    with LLM(model_path, mmproj=files["mmproj"], temperature=0, max_tokens=12, repeat_penalty=1.0,
             n_ctx=1024) as m:
        yield m


def test_chat_with_an_image_generates_and_depends_on_it(vlm, files) -> None:
    a = vlm.chat(image_msg(data_url(files["png"])))
    st = vlm.last_stats
    assert a and st.prompt_tokens > 16 and st.generated_tokens > 0
    # a path works in process, and gives the same answer (the same image: the same embeddings;
    # evaluated afresh, so the batch shapes are the same as the first time)
    vlm.reset()
    assert vlm.chat(image_msg(files["png"])) == a
    # the image reaches the model: a different picture changes the logits after it
    b = vlm.chat(image_msg(files["png2"]))
    vlm.reset()
    text_only = vlm.chat([{"role": "user", "content": "Describe this image."}])
    assert len({a, b, text_only}) >= 2


def test_a_second_turn_reuses_the_images_kv(vlm, files) -> None:
    vlm.reset()
    msgs = image_msg(data_url(files["png"]))
    first = vlm.chat(msgs)
    n_first = vlm.last_stats.prompt_tokens
    msgs = msgs + [{"role": "assistant", "content": first}, {"role": "user", "content": "What colours?"}]
    vlm.chat(msgs)
    st = vlm.last_stats
    # everything of the first turn, image included, came from the cache: only new text was evaluated
    assert st.cached_tokens >= n_first - 1 and st.prompt_tokens > n_first


def test_two_images_in_one_message(vlm, files) -> None:
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(files["png"])}},
                                         {"type": "image_url", "image_url": {"url": data_url(files["png2"])}},
                                         {"type": "text", "text": "Compare them."}]}]
    assert vlm.chat(msgs) is not None
    assert vlm.last_stats.prompt_tokens > 32


def test_media_errors_are_clear(vlm, files, model_path) -> None:
    with pytest.raises(ValueError, match="not an image"):
        vlm.chat(image_msg(files["txt"]))
    with pytest.raises(ValueError, match="could not be decoded"):
        vlm.chat(image_msg(files["cut"]))
    with pytest.raises(ValueError, match="not valid base64"):
        vlm.chat(image_msg("data:image/png;base64,@@@"))
    with pytest.raises(ValueError, match="media marker"):  # user text cannot open a media slot
        vlm.chat([{"role": "user", "content": f"hi {vlm.mtmd.marker}"}] + image_msg(files["png"]))
    # without media parts the marker is plain text, and libmtmd never sees the prompt
    assert isinstance(vlm.chat([{"role": "user", "content": f"Repeat: {vlm.mtmd.marker}"}]), str)
    with pytest.raises(ValueError, match="no audio encoder"):
        vlm.chat([{"role": "user", "content": [{"type": "input_audio", "input_audio": {
            "data": base64.b64encode(b"RIFF\x00\x00\x00\x00WAVEfmt ").decode(), "format": "wav"}}]}])
    with LLM(model_path) as plain:
        with pytest.raises(ValueError, match="mmproj"):
            plain.chat(image_msg(files["png"]))
    assert vlm.chat([{"role": "user", "content": "Still fine?"}])  # the model is still usable


def test_image_urls_are_downloaded_in_process(vlm, files) -> None:
    import http.server
    import threading

    body = Path(files["png"]).read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/huge.png":  # claims more than the limit
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 30))
                self.end_headers()
                return
            self.send_response(200 if self.path == "/a.png" else 404)
            self.end_headers()
            if self.path == "/a.png":
                self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert vlm.chat(image_msg(base + "/a.png")) == vlm.chat(image_msg(files["png"]))
        with pytest.raises(ValueError, match="could not download"):
            vlm.chat(image_msg(base + "/missing.png"))
        with pytest.raises(ValueError, match="at most"):
            vlm.chat(image_msg(base + "/huge.png"))
    finally:
        srv.shutdown()


def test_image_too_large_for_the_context(model_path, files) -> None:
    with LLM(model_path, mmproj=files["mmproj"], n_ctx=256, max_tokens=4) as small:  # 20 images: 320 positions
        msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": files["png"]}}] * 20
                 + [{"type": "text", "text": "x"}]}]
        with pytest.raises(ValueError, match="context"):
            small.chat(msgs)


# -- the OpenAI entry points -------------------------------------------------------------------------------
def test_in_process_client_takes_image_parts(vlm, files) -> None:
    from cyllama.integrations import OpenAICompatibleClient

    c = OpenAICompatibleClient(llm=vlm, temperature=0, max_tokens=8)
    r = c.chat.completions.create(model="m", messages=image_msg(data_url(files["png"])))
    assert r.choices[0].message.content and r.usage.prompt_tokens > 16
    # n > 1: each choice gets its own chunks over the same decoded image
    r2 = c.chat.completions.create(model="m", messages=image_msg(data_url(files["png"])), n=2)
    assert len(r2.choices) == 2 and all(ch.message.content for ch in r2.choices)


def test_server_images_stream_and_isolation(model_path, files) -> None:
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    from concurrent.futures import ThreadPoolExecutor

    from cyllama.llama.server.embedded import EmbeddedServer

    s = EmbeddedServer(model_path, port=0, n_ctx=512, n_parallel=2, mmproj=files["mmproj"])
    s.start()
    try:
        api = openai.OpenAI(base_url=s.base_url + "/v1", api_key="none", max_retries=0)
        card = api.models.list().data[0]
        assert card.model_extra["modalities"] == ["text", "image"]

        def first_token(path: str) -> dict[str, float]:
            r = api.chat.completions.create(model=card.id, messages=image_msg(data_url(path)), max_tokens=1,
                                            temperature=0, logprobs=True, top_logprobs=5)
            assert r.usage.prompt_tokens > 16
            return {t.token: t.logprob for t in r.choices[0].logprobs.content[0].top_logprobs}

        def dist(a: dict[str, float], b: dict[str, float]) -> float:  # over the top tokens both list
            common = set(a) & set(b)
            return max((abs(a[t] - b[t]) for t in common), default=99.0) if len(common) >= 3 else 99.0

        alone = [first_token(files["png"]), first_token(files["png2"])]
        apart = dist(alone[0], alone[1])
        # two images in flight at once, in two slots: each sees only its own image (batch shapes
        # and KV placement change the rounding a little, another image changes much more)
        with ThreadPoolExecutor(2) as ex:
            together = list(ex.map(first_token, [files["png"], files["png2"]]))
        assert apart > 0.5
        assert dist(together[0], alone[0]) < apart / 2 and dist(together[1], alone[1]) < apart / 2
        whole = api.chat.completions.create(model=card.id, messages=image_msg(data_url(files["png"])),
                                            max_tokens=10, temperature=0).choices[0].message.content
        chunks = list(api.chat.completions.create(model=card.id, messages=image_msg(data_url(files["png"])),
                                                  max_tokens=10, temperature=0, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
        # a server never reads its own files for a client, nor fetches URLs unless told to
        with pytest.raises(openai.BadRequestError, match="data: URL"):
            api.chat.completions.create(model=card.id, messages=image_msg(files["png"]), max_tokens=4)
        with pytest.raises(openai.BadRequestError, match="allow-image-urls"):
            api.chat.completions.create(model=card.id, messages=image_msg("http://127.0.0.1:9/a.png"), max_tokens=4)
        with pytest.raises(openai.BadRequestError, match="could not be decoded"):
            api.chat.completions.create(model=card.id, messages=image_msg(data_url(files["cut"])), max_tokens=4)
    finally:
        s.stop()


def test_cli_generate_with_an_image(model_path, files) -> None:
    r = subprocess.run([sys.executable, "-m", "cyllama", "generate", "-m", str(model_path), "--mmproj",
                        files["mmproj"], "--image", files["png"], "-p", "Describe this.", "-n", "6", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


# -- bad projectors and media never crash the process (each in its own interpreter) ------------------------
def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=str(HERE.parent), env={**os.environ, "PYTHONPATH": str(HERE.parent)})


@pytest.mark.parametrize("case, expect", [
    ("narrow", "mismatch"),  # a projector for a wider model
    ("text_model", "not a multimodal projector"),
    ("missing_tensors", "needs tensors"),  # libmtmd would read through a null pointer
    ("truncated", "failed to load the projector"),
    ("not_gguf", "not a GGUF"),
])
def test_bad_projectors_raise(files, model_path, tmp_path, case, expect) -> None:
    if case == "narrow":
        path = files["narrow"]
    elif case == "text_model":
        path = str(model_path)
    elif case == "missing_tensors":
        import gguf

        path = str(tmp_path / "no-mm2.gguf")
        r = gguf.GGUFReader(files["mmproj"])
        w = gguf.GGUFWriter(path, arch="clip")
        for f in r.fields.values():
            if f.name.startswith(("clip.", "general.name")):
                val = f.contents()
                if isinstance(val, bool):
                    w.add_bool(f.name, val)
                elif isinstance(val, str):
                    w.add_string(f.name, val)
                elif isinstance(val, list):
                    w.add_array(f.name, val)
                elif isinstance(val, float):
                    w.add_float32(f.name, val)
                else:
                    w.add_uint32(f.name, int(val))
        for t in r.tensors:
            if not t.name.startswith("mm.2"):
                w.add_tensor(t.name, np.array(t.data).reshape(list(reversed([int(x) for x in t.shape]))))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    elif case == "truncated":
        data = Path(files["mmproj"]).read_bytes()
        path = str(tmp_path / "cut.gguf")
        Path(path).write_bytes(data[: len(data) * 2 // 3])
    else:
        path = files["txt"]
    r = _run(f"""
        from cyllama import LlamaModel
        from cyllama.llama.mtmd import MtmdContext
        m = LlamaModel({str(model_path)!r})
        try:
            MtmdContext({path!r}, m, use_gpu=False)
        except Exception as e:
            print("RAISED", type(e).__name__, e)
    """)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "RAISED" in r.stdout and expect in r.stdout, r.stdout + r.stderr[-1000:]


def test_bad_bitmaps_and_markers_raise(files, model_path) -> None:
    r = _run(f"""
        import numpy as np
        from cyllama import LlamaModel
        from cyllama.llama.mtmd import MtmdContext, MtmdBitmap
        m = LlamaModel({str(model_path)!r})
        mm = MtmdContext({files["mmproj"]!r}, m, use_gpu=False)
        bm = mm.bitmap({files["png"]!r})
        checks = [
            lambda: MtmdBitmap.from_rgb(np.zeros((0, 4, 3), np.uint8)),
            lambda: MtmdBitmap.from_rgb(np.zeros((4, 4), np.uint8)),
            lambda: MtmdBitmap.from_rgb(np.full((2, 2, 3), 300)),
            lambda: mm.tokenize(mm.marker + mm.marker, [bm]),
            lambda: mm.tokenize("no marker", [bm]),
            lambda: mm.bitmap(b""),
            lambda: mm.bitmap(b"\\x89PNG\\r\\n\\x1a\\n" + b"\\x00" * 40),
            lambda: mm.bitmap(np.zeros(100, np.float32)),
        ]
        for c in checks:
            try:
                c()
                print("NO ERROR")
            except (ValueError, TypeError) as e:
                print("RAISED", e)
    """)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.count("RAISED") == 8, r.stdout


# -- a real vision model, when given --------------------------------------------------------------------------
def test_real_vlm_matches_llama_mtmd_cli(files) -> None:
    spec = os.environ.get("CYLLAMA_TEST_VLM")
    if not spec or ":" not in spec:
        pytest.skip("set CYLLAMA_TEST_VLM=MODEL.gguf:MMPROJ.gguf to compare a real vision model with llama-mtmd-cli")
    model, mmproj = spec.split(":", 1)
    from cyllama._ffi import lib_dir

    cli = lib_dir() / "llama-mtmd-cli"
    if not cli.exists():
        pytest.skip("llama-mtmd-cli is not built")
    image = files["png"]
    prompt = "Describe this image in one sentence."
    native = subprocess.run([str(cli), "-m", model, "--mmproj", mmproj, "--image", image, "-p", prompt, "-n", "24",
                             "--temp", "0", "--no-warmup"], capture_output=True, text=True, timeout=900)
    assert native.returncode == 0, native.stderr[-2000:]
    with LLM(model, mmproj=mmproj, temperature=0, max_tokens=24, repeat_penalty=1.0) as m:
        ours = m.chat(image_msg(image, prompt))
    assert ours.strip() and ours.strip()[:40] in native.stdout


# -- the drop-in: llama-cpp-python's chat handlers -------------------------------------------------------------
@pytest.mark.parametrize("handler_name", ["MTMDChatHandler", "Llava15ChatHandler"])
def test_drop_in_chat_handlers(model_path, files, handler_name) -> None:
    from cyllama.llama_cpp import Llama, llama_chat_format

    handler = getattr(llama_chat_format, handler_name)(clip_model_path=files["mmproj"], use_gpu=False)
    llm = Llama(str(model_path), n_ctx=1024, chat_handler=handler, verbose=False)
    try:
        msgs = image_msg(data_url(files["png"]))
        r = llm.create_chat_completion(messages=msgs, max_tokens=8, temperature=0)
        text = r["choices"][0]["message"]["content"]
        assert text and r["usage"]["prompt_tokens"] > 16
        chunks = list(llm.create_chat_completion(messages=msgs, max_tokens=8, temperature=0, stream=True))
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        # plain text completions still work on the same Llama afterwards
        assert llm("1, 2, 3,", max_tokens=3, temperature=0)["choices"][0]["text"]
    finally:
        llm.close()
