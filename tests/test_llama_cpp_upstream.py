"""llama-cpp-python's own tests, run against ``cyllama.llama_cpp``, and its names compared with ours.

The test files come from the llama-cpp-python sdist that ``build_lib.py`` downloads (llama.cpp's
source), unmodified: ``llama_cpp_upstream_conftest.py`` (copied next to them as ``conftest.py``)
makes ``llama_cpp`` resolve to ``cyllama.llama_cpp`` in a separate interpreter and points their
model downloads at the models we ship; a test that needs a model we cannot get is skipped with
that reason. The names are read from the sdist's source text (it is never imported).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cyllama import _assets

ROOT = Path(__file__).resolve().parent.parent
ASSET = _assets.ASSETS["llama.cpp-source"]
PREFIX = f"llama_cpp_python-{ASSET.version}/"
UPSTREAM_TESTS = ("test_llama.py", "test_llama_chat_format.py", "test_llama_grammar.py", "test_llama_speculative.py")
#: the only reason an upstream test may be skipped for
SKIP_REASON = "not available offline from the package registry"


@pytest.fixture(scope="module")
def sdist() -> tarfile.TarFile:
    path = _assets.cache_dir() / "downloads" / ASSET.filename
    if not path.exists():
        pytest.skip(f"{ASSET.filename} is not downloaded yet (python build_lib.py fetches it)")
    with tarfile.open(path) as tf:
        yield tf


def _read(tf: tarfile.TarFile, member: str) -> str:
    f = tf.extractfile(PREFIX + member)
    assert f is not None, member
    return f.read().decode("utf-8")


@pytest.fixture(scope="module")
def upstream_dir(sdist: tarfile.TarFile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("scipy", reason="llama-cpp-python's tests import scipy (the dev extra installs it)")
    pytest.importorskip("huggingface_hub", reason="llama-cpp-python's tests import huggingface_hub (dev extra)")
    d = tmp_path_factory.mktemp("llama_cpp_upstream")
    for name in UPSTREAM_TESTS:
        (d / name).write_text(_read(sdist, f"tests/{name}"), encoding="utf-8")
    shutil.copy(Path(__file__).with_name("llama_cpp_upstream_conftest.py"), d / "conftest.py")
    return d


def _run_pytest(folder: Path, name: str, timeout: float = 600) -> list[tuple[str, str, str]]:
    """Runs one upstream test file in a fresh interpreter; returns (test, outcome, message) rows."""
    report = folder / f"{name}.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                           f"--junitxml={report}", name], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert report.exists(), f"pytest wrote no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    rows = []
    for case in ET.parse(report).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome, message = tag, el.get("message", "")
        rows.append((test, outcome, message))
    assert proc.returncode in (0, 1), f"pytest exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return rows


@pytest.mark.parametrize("name", UPSTREAM_TESTS)
def test_upstream_test_file(upstream_dir: Path, name: str) -> None:
    rows = _run_pytest(upstream_dir, name)
    failed = [f"{t}: {m}" for t, o, m in rows if o in ("failure", "error")]
    assert not failed, "\n".join(failed)
    passed = [t for t, o, _ in rows if o == "passed"]
    assert passed, f"no test of {name} ran"
    bad_skips = [f"{t}: {m}" for t, o, m in rows if o == "skipped" and SKIP_REASON not in m]
    assert not bad_skips, "\n".join(bad_skips)


# -- names -------------------------------------------------------------------------------------
def _module_names(source: str) -> dict[str, object]:
    """Public names a module defines at top level, with the literal value of constants
    (``...`` when not a literal); imports from the llama_cpp package count, others do not."""
    out: dict[str, object] = {}

    def visit(body: list) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                out[node.name] = ...
            elif isinstance(node, ast.Assign):
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    value = ...
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        out[target.id] = value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                out[node.target.id] = ...
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("llama_cpp")):
                for alias in node.names:
                    out[alias.asname or alias.name] = f"import {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("llama_cpp"):
                        out[alias.asname or alias.name] = f"import {alias.name}"
    visit(ast.parse(source).body)
    return {k: v for k, v in out.items() if not k.startswith("_") or k == "*"}


#: llama-cpp-python names the drop-in leaves out on purpose, per module (see its docstrings).
NOT_MIRRORED = {
    "_internals": {"CustomSampler"},  # a Python sampler as a ctypes callback: use a logits processor
    # the per-family multimodal handlers (MTMDChatHandler and Llava15ChatHandler are mirrored; the
    # model's own template renders the rest), and module internals
    "llama_chat_format": {
        "Gemma4ChatHandler", "ObsidianChatHandler",
        "MoondreamChatHandler", "Llava16ChatHandler", "NanoLlavaChatHandler", "Llama3VisionAlphaChatHandler",
        "Llama3VisionAlpha", "MiniCPMv26ChatHandler", "Qwen25VLChatHandler", "Singleton", "logger", "llama",
    },
}
#: llama_cpp.llama_cpp functions with cyllama's own Python side (every function of llama.h is there too:
#: tests/test_llama_cpp_lowlevel.py)
CTYPES_FUNCTIONS_MIRRORED = {
    "llama_model_default_params", "llama_context_default_params", "llama_sampler_chain_default_params",
    "llama_supports_mmap", "llama_supports_mlock", "llama_supports_gpu_offload", "llama_supports_rpc",
    "llama_max_devices", "llama_max_parallel_sequences", "llama_print_system_info",
}


def test_constants_and_ctypes_names_of_llama_cpp_llama_cpp(sdist: tarfile.TarFile) -> None:
    import cyllama.llama_cpp as top
    import cyllama.llama_cpp.llama_cpp as ours

    upstream = _module_names(_read(sdist, "llama_cpp/llama_cpp.py"))
    constants = {k: v for k, v in upstream.items() if k.isupper()}
    assert len(constants) > 200
    missing = sorted(k for k in constants if not hasattr(ours, k) or not hasattr(top, k))
    assert not missing, f"constants of llama_cpp.llama_cpp missing: {missing}"
    wrong = {k: (v, getattr(ours, k)) for k, v in constants.items() if isinstance(v, int) and getattr(ours, k) != v}
    assert not wrong, f"constants with other values than llama-cpp-python's: {wrong}"
    for name in CTYPES_FUNCTIONS_MIRRORED:
        assert name in upstream and callable(getattr(ours, name)) and getattr(top, name) is getattr(ours, name)


def test_top_level_names(sdist: tarfile.TarFile) -> None:
    import cyllama.llama_cpp as ours

    init = _read(sdist, "llama_cpp/__init__.py")
    assert "from .llama_cpp import *" in init and "from .llama import *" in init
    names = set(_module_names(_read(sdist, "llama_cpp/llama.py")))
    names.discard("*")  # from .llama_types import *
    names |= set(_module_names(_read(sdist, "llama_cpp/llama_types.py")))
    names |= {"__version__", "JSON_GBNF", "JSON_ARR_GBNF", "LIST_GBNF", "ARITHMETIC_GBNF"}
    missing = sorted(n for n in names if not hasattr(ours, n))
    assert not missing, f"top-level names of llama_cpp missing from cyllama.llama_cpp: {missing}"
    assert set(ours.__all__) >= {n for n in names if n not in ("internals",)} - {"llama_cpp", "llama_chat_format"}
    assert ours.internals is ours._internals and ours.__version__ == ASSET.version


@pytest.mark.parametrize("module", ["llama_types", "llama_grammar", "llama_cache", "llama_speculative",
                                    "llama_tokenizer", "llama_chat_format", "_internals"])
def test_submodule_names(sdist: tarfile.TarFile, module: str) -> None:
    import importlib

    ours = importlib.import_module(f"cyllama.llama_cpp.{module}")
    upstream = {k for k, v in _module_names(_read(sdist, f"llama_cpp/{module}.py")).items()
                if k != "*" and not (isinstance(v, str) and v.startswith("import "))}
    gaps = NOT_MIRRORED.get(module, set())
    missing = sorted(n for n in upstream - gaps if not hasattr(ours, n))
    assert not missing, f"llama_cpp.{module} names missing from cyllama.llama_cpp.{module}: {missing}"
    stale = sorted(n for n in gaps if hasattr(ours, n))
    assert not stale, f"now provided, remove from NOT_MIRRORED: {stale}"
    assert not [n for n in getattr(ours, "__all__", ()) if not hasattr(ours, n)]


def test_grammar_constants_and_schema_converter(sdist: tarfile.TarFile) -> None:
    from cyllama.grammar import json_schema_to_grammar
    from cyllama.llama_cpp import llama_grammar

    upstream = _module_names(_read(sdist, "llama_cpp/llama_grammar.py"))
    for name in ("ARITHMETIC_GBNF", "C_GBNF", "CHESS_GBNF", "JAPANESE_GBNF", "LIST_GBNF"):
        assert getattr(llama_grammar, name) == upstream[name], name
    schema = {"$defs": {"A": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}},
              "type": "object", "properties": {"b": {"$ref": "#/$defs/A"}, "c": {"type": "string"}}}
    conv = llama_grammar.SchemaConverter(prop_order={"c": 0}, allow_fetch=False, dotall=False, raw_pattern=False)
    assert conv.visit(conv.resolve_refs(schema, "stdin"), "") == "root"
    assert conv.format_grammar() + "\n" == json_schema_to_grammar(schema, prop_order=["c"])
    assert conv.visit(schema["$defs"]["A"], "item") == "item"  # a part of the document, merged
    assert "item ::= " in conv.format_grammar() and "root ::= " in conv.format_grammar()
    with pytest.raises(ValueError, match="remote"):
        conv.resolve_refs({"$ref": "https://example.invalid/schema.json"}, "stdin")


# -- llama_cpp._internals on the default model ---------------------------------------------------
def test_internals_low_level_generation(model_path: Path) -> None:
    """test_real_model of llama-cpp-python on our model (its token ids are Qwen's)."""
    import cyllama.llama_cpp as llama_cpp
    from cyllama.llama_cpp import _internals as internals

    params = llama_cpp.llama_model_default_params()
    if llama_cpp.llama_supports_mmap():
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
    params.check_tensors = False
    model = internals.LlamaModel(path_model=str(model_path), params=params)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = 32
    cparams.n_threads = cparams.n_threads_batch = 2
    cparams.logits_all = False
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    context = internals.LlamaContext(model=model, params=cparams)
    assert context.n_ctx() >= 32 and model.n_vocab() == 49152 and model.metadata()["general.architecture"] == "llama"
    tokens = model.tokenize(b"1, 2, 3, 4, 5,", add_bos=True, special=True)
    assert model.detokenize(tokens) == b"1, 2, 3, 4, 5,"
    n_prompt = len(tokens)
    batch = internals.LlamaBatch(n_tokens=len(tokens), embd=0, n_seq_max=1)
    sampler = internals.LlamaSampler()
    sampler.add_top_k(1)  # greedy through the chain; "6" leads by a wide margin
    sampler.add_dist(1337)
    result, n_eval = list(tokens), 0
    for _ in range(2):
        batch.set_batch(tokens, n_past=n_eval, logits_all=False)
        context.decode(batch)
        n_eval += len(tokens)
        assert context.get_logits_ith(-1).shape == (model.n_vocab(),)
        tokens = [sampler.sample(context, -1)]
        result += tokens
    assert model.detokenize(result[n_prompt:], special=True).startswith(b" 6")
    with pytest.raises(ValueError):
        batch.set_batch([model.n_vocab()], n_past=n_eval, logits_all=False) or context.decode(batch)
    model.close()
    assert context.ctx is None and model.model is None and sampler.sampler is not None
    sampler.close()
    assert sampler.sampler is None


def test_vocab_only_llama_has_a_context_it_never_evaluates() -> None:
    from cyllama.llama_cpp import Llama

    llm = Llama(model_path=str(_assets.vocab_model_path("llama-spm")), vocab_only=True, verbose=False)
    assert llm._ctx.ctx is not None and llm.tokenize(b"Hello World") == [1, 15043, 2787]
    with pytest.raises(RuntimeError, match="vocab_only"):
        llm.eval([1, 15043])
    ctx = llm._ctx
    llm.close()
    assert ctx.ctx is None


def test_half_read_generation_is_collected_without_hanging(model_path: Path) -> None:
    """A Llama whose only reference is a half-read generator or stream is freed by the garbage
    collector (a reference cycle included), and the interpreter exits normally."""
    code = textwrap.dedent(f"""
        import gc, weakref
        from cyllama.llama_cpp import Llama

        def half_read(kind):
            llm = Llama({str(model_path)!r}, n_ctx=64, n_threads=1, verbose=False)
            ref = weakref.ref(llm)
            if kind == "generate":
                it = llm.generate(llm.tokenize(b"1, 2, 3,"), temp=0.0)
            else:
                it = llm.create_completion("1, 2, 3,", max_tokens=8, temperature=0, stream=True)
            next(it)
            llm.cycle = llm  # only the collector can free it
            return ref, it

        for kind in ("generate", "stream", "generate"):
            ref, it = half_read(kind)
            del it
            gc.collect()
            assert ref() is None, kind
        ref, it = half_read("stream")  # left to the interpreter's exit
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
