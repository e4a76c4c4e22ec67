"""``cyllama.llama_cpp.llama_cpp``: llama.h's functions under llama-cpp-python's names, on cffi.

The names come from llama-cpp-python's own ``llama_cpp/llama_cpp.py`` in the sdist that
``build_lib.py`` downloads (read as text, never imported).
"""

from __future__ import annotations

import ast
import ctypes
import logging
import os
import re
import tarfile
import warnings
from pathlib import Path

import pytest

import cyllama.llama_cpp as top
import cyllama.llama_cpp.llama_cpp as L
from cyllama import LlamaContext, LlamaModel, LlamaSampler, _assets, _logging, llama_batch_get_one
from cyllama.llama_cpp.llama_cpp import CtypesOnlyError, ffi

ROOT = Path(__file__).resolve().parent.parent
ASSET = _assets.ASSETS["llama.cpp-source"]
PROMPT = b"The capital of France is"


@pytest.fixture(scope="module")
def upstream_source() -> str:
    path = _assets.cache_dir() / "downloads" / ASSET.filename
    if not path.exists():
        pytest.skip(f"{ASSET.filename} is not downloaded yet (python build_lib.py fetches it)")
    with tarfile.open(path) as tf:
        f = tf.extractfile(f"llama_cpp_python-{ASSET.version}/llama_cpp/llama_cpp.py")
        assert f is not None
        return f.read().decode("utf-8")


def _upstream_names(source: str) -> tuple[set[str], set[str]]:
    """(functions, ctypes types): the public functions llama_cpp.py defines, and the names it binds
    to ctypes classes, ctypes type aliases, NewTypes and CFUNCTYPE callback types."""
    functions, types = set(), set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            functions.add(node.name)
        elif isinstance(node, ast.ClassDef):
            types.add(node.name)
        elif isinstance(node, ast.Assign) and re.match(r"(ctypes\.|NewType\()", ast.unparse(node.value)):
            types.update(t.id for t in node.targets if isinstance(t, ast.Name) and not t.id.startswith("_"))
    return functions, types


def _declared_functions() -> set[str]:
    text = (ROOT / "cyllama" / "_ffi" / "cdefs" / "llama.h").read_text()
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)  # the generated cdefs keep the comments
    names = set(re.findall(r"\b(llama_\w+)\s*\(", text))
    return {n for n in names if ffi.typeof(getattr(L._lib, n)).kind == "function"}


def test_every_upstream_function_resolves(upstream_source: str) -> None:
    functions, _ = _upstream_names(upstream_source)
    declared = _declared_functions()
    assert len(functions) > 250 and len(declared) > 240
    in_declarations = sorted(functions & declared)
    for name in in_declarations:
        fn = getattr(L, name)
        assert callable(fn) and fn.__name__ == name, name
        assert getattr(top, name) is fn, name  # `import llama_cpp; llama_cpp.llama_decode(...)` too
        assert name in L.__all__
    # the rest are llama-cpp-python's Python helpers over declared functions: provided as well
    helpers = sorted(functions - declared)
    assert helpers == ["llama_apply_adapter_cvec", "llama_set_adapter_lora"]
    for name in helpers:
        assert callable(getattr(L, name)) and getattr(top, name) is getattr(L, name)
    # and every llama_* function of our declarations, upstream's or not
    assert not [n for n in declared if not callable(getattr(L, n, None))]


def test_ctypes_types_raise_a_clear_error(upstream_source: str) -> None:
    _, types = _upstream_names(upstream_source)
    ours = {"llama_model_params", "llama_context_params", "llama_sampler_chain_params"}  # cyllama's classes
    assert ours <= types and all(isinstance(getattr(L, n), type) for n in ours)
    missing = sorted(types - ours)
    assert len(missing) > 60 and "llama_batch" in missing and "llama_log_callback" in missing
    for name in missing:
        with pytest.raises(CtypesOnlyError, match="ctypes") as info:
            getattr(L, name)
        assert isinstance(info.value, AttributeError) and isinstance(info.value, NotImplementedError)
        assert not hasattr(L, name)
    with pytest.raises(CtypesOnlyError, match=r"ffi\.new\('struct llama_batch \*'\)"):
        L.llama_batch
    with pytest.raises(CtypesOnlyError, match="llama_log_set takes a plain Python callable"):
        L.llama_log_callback
    with pytest.raises(CtypesOnlyError, match=r"ffi\.callback"):
        L.llama_progress_callback
    with pytest.raises(AttributeError, match="not a function of llama.h") as info:
        L.llama_no_such_function
    assert not isinstance(info.value, CtypesOnlyError)


def _greedy_lowlevel(ctx, vocab, tokens, n_tokens: int, n: int) -> list[int]:
    assert L.llama_decode(ctx, L.llama_batch_get_one(tokens, n_tokens)) == 0
    n_vocab = L.llama_vocab_n_tokens(vocab)
    out = []
    one = ffi.new("llama_token[1]")
    for _ in range(n):
        logits = L.llama_get_logits_ith(ctx, -1)
        one[0] = max(range(n_vocab), key=logits.__getitem__)
        out.append(one[0])
        assert L.llama_decode(ctx, L.llama_batch_get_one(one, 1)) == 0
    return out


def test_low_level_flow_matches_the_core(model_path: Path, model: LlamaModel, ctx: LlamaContext) -> None:
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    lmodel = L.llama_model_load_from_file(os.fsencode(model_path), mparams)
    assert lmodel is not None and ffi.typeof(lmodel).cname == "struct llama_model *"
    cparams = L.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_threads, cparams.n_threads_batch = 256, 256, 2, 2
    lctx = L.llama_init_from_model(lmodel, cparams)
    try:
        assert L.llama_n_ctx(lctx) == 256
        vocab = L.llama_model_get_vocab(lmodel)
        assert L.llama_model_n_embd(lmodel) == model.n_embd
        tokens = ffi.new("llama_token[]", 64)
        n = L.llama_tokenize(vocab, PROMPT, len(PROMPT), tokens, 64, True, False)
        assert list(tokens[0:n]) == model.get_vocab().tokenize(PROMPT)
        out = _greedy_lowlevel(lctx, vocab, tokens, n, 4)
        # the core classes, on the session model, decode the same tokens to the same tokens
        ctx.decode(llama_batch_get_one(list(tokens[0:n])))
        sampler = LlamaSampler().add_greedy()
        core = []
        for _ in range(4):
            tok = sampler.sample(ctx, -1)
            core.append(tok)
            ctx.decode(llama_batch_get_one([tok]))
        assert out == core
        piece = ffi.new("char[]", 64)
        k = L.llama_token_to_piece(vocab, out[0], piece, 64, 0, True)
        assert b"Paris" in ffi.buffer(piece, k)[:]
        assert isinstance(L.llama_vocab_get_text(vocab, out[0]), bytes)  # char * results are bytes
        assert L.llama_model_chat_template(lmodel, b"no-such-template") is None  # NULL results are None
        desc = ffi.new("char[]", 128)
        assert L.llama_model_desc(lmodel, desc, 128) > 0 and ffi.string(desc)
    finally:
        L.llama_free(lctx)
        L.llama_model_free(lmodel)


def test_core_objects_and_internals_pointers_are_accepted(model: LlamaModel, ctx: LlamaContext) -> None:
    assert L.llama_model_n_ctx_train(model.ptr) == model.n_ctx_train
    assert L.llama_model_n_ctx_train(model) == model.n_ctx_train  # a handle object: its .ptr
    assert L.llama_vocab_n_tokens(model.get_vocab().ptr) == model.n_vocab
    assert L.llama_n_ctx(ctx.ptr) == ctx.n_ctx
    assert L.llama_get_model(ctx.ptr) == model.ptr
    assert isinstance(L.llama_print_system_info(), bytes) and b"CPU" in L.llama_print_system_info()
    assert isinstance(L.llama_supports_gpu_offload(), bool) and L.llama_supports_mmap() is True
    assert L.llama_model_load_from_file(b"/nonexistent/model.gguf", L.llama_model_default_params()) is None
    with pytest.warns(DeprecationWarning, match="use llama_vocab_n_tokens"):
        assert L.llama_n_vocab(model.get_vocab().ptr) == model.n_vocab
    with pytest.warns(DeprecationWarning, match="use llama_set_adapter_cvec"):
        assert L.llama_apply_adapter_cvec(ctx.ptr, ffi.NULL, 0, model.n_embd, 0, 0) == 0  # clears: none set


def test_ctypes_idioms_are_refused_with_the_cffi_equivalent(model: LlamaModel, ctx: LlamaContext) -> None:
    vocab = model.get_vocab().ptr

    class llama_model_params(ctypes.Structure):
        _fields_ = [("n_gpu_layers", ctypes.c_int32)]

    cases = [
        (lambda: L.llama_n_ctx(ctypes.c_void_p(0)), r"ctypes c_void_p is not a cffi pointer.*\.ptr"),
        (lambda: L.llama_tokenize(vocab, PROMPT, len(PROMPT), (ctypes.c_int32 * 8)(), 8, True, False),
         r"argument 4 .*a ctypes array .*ffi\.new\('int32_t\[\]', n\)"),
        (lambda: L.llama_model_meta_val_str(model.ptr, b"general.name", ctypes.create_string_buffer(64), 64),
         r"ctypes array.*ffi\.new\('char\[\]', n\)"),
        (lambda: L.llama_sampler_apply(ffi.NULL, ctypes.byref(ctypes.c_int())),
         r"ctypes\.byref\(\).*ffi\.new\('struct llama_token_data_array \*'\)"),
        (lambda: L.llama_model_load_from_file(b"x.gguf", llama_model_params()),
         r"ctypes struct .*ffi\.new\('struct llama_model_params \*'\), then pass p\[0\]"),
        (lambda: L.llama_set_abort_callback(ctx.ptr, ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p)(lambda _: False),
                                            ffi.NULL), r"CFUNCTYPE.*ffi\.callback"),
        (lambda: L.llama_set_abort_callback(ctx.ptr, lambda _: False, ffi.NULL), r"ffi\.callback"),
        (lambda: L.llama_set_n_threads(ctx.ptr, ctypes.c_int(2), 2), r"c_int is not a Python number.*\.value"),
        (lambda: L.llama_n_ctx(None), r"None is not passed as NULL.*ffi\.NULL"),
        (lambda: L.llama_n_ctx(id(ctx)), r"an int is not a pointer"),
        (lambda: L.llama_n_ctx(model.ptr), r"llama_n_ctx\(\): .*struct llama_context \*"),
        (lambda: L.llama_n_ctx(), r"takes 1 arguments \(0 given\)"),
    ]
    for call, pattern in cases:
        with pytest.raises(TypeError, match=pattern):
            call()
    assert L.llama_n_ctx(ctx.ptr) == ctx.n_ctx  # the context is untouched


def test_llama_log_set_routes_the_log(caplog: pytest.LogCaptureFixture) -> None:
    seen = []
    marker = object()
    L.llama_log_set(lambda level, text, user_data: seen.append((level, text, user_data)), marker)
    try:
        assert L.llama_model_load_from_file(b"/nonexistent/a.gguf", L.llama_model_default_params()) is None
        assert seen and all(isinstance(t, bytes) and isinstance(lv, int) and ud is marker for lv, t, ud in seen)
        text = b"".join(t for _, t, _ in seen)
        assert b"/nonexistent/a.gguf" in text
        error = ffi.typeof("enum ggml_log_level").relements["GGML_LOG_LEVEL_ERROR"]
        assert any(lv == error for lv, _, _ in seen)
        assert any("/nonexistent/a.gguf" in line for line in _logging.last_errors())  # cyllama's handling too

        def broken(level, text, user_data):
            raise RuntimeError("boom")

        L.llama_log_set(broken, None)
        with caplog.at_level(logging.ERROR, logger="cyllama"):
            assert L.llama_model_load_from_file(b"/nonexistent/b.gguf", L.llama_model_default_params()) is None
        assert any("llama_log_set raised" in r.getMessage() for r in caplog.records)
    finally:
        L.llama_log_set(None, None)
    seen.clear()
    assert L.llama_model_load_from_file(b"/nonexistent/c.gguf", L.llama_model_default_params()) is None
    assert seen == []
    with pytest.raises(TypeError, match="callable"):
        L.llama_log_set("not callable", None)
    with pytest.raises(TypeError, match="Python callable"):
        L.llama_log_set(ffi.callback("void(enum ggml_log_level, const char *, void *)", lambda *a: None), None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L.llama_backend_init()  # idempotent
