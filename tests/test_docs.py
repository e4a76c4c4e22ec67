"""The documentation: ``mkdocs build --strict`` (broken links, cross-references and API entries
fail it), and every Python sample of the guide run against the default model.

Each page's ``python`` blocks run in order as one script, in a fresh interpreter, in a folder
where ``model.gguf`` (and ``draft.gguf``) is the default model, ``speech.wav`` whisper.cpp's JFK
sample, and ``mmproj.gguf`` / ``photo.png`` a tiny random projector and image
(tests/tiny_mmproj.py), so the samples read as user code. A block right after ``<!-- skip: reason -->`` is not run (it needs a
bigger model, a GPU or another machine): the reason is stated in the page source.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!--\s*skip:\s*\S.*?-->\s*$")


def python_blocks(text: str) -> tuple[list[str], int]:
    """The page's runnable Python blocks, in order, and how many were marked skip."""
    run, skipped = [], 0
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip().splitlines()
        if before and SKIP.search(before[-1]):
            skipped += 1
        else:
            run.append(m.group(1))
    return run, skipped


def guide_pages() -> list[Path]:
    pages = sorted(DOCS.glob("*.md")) + sorted((DOCS / "guide").glob("*.md"))
    return [p for p in pages if python_blocks(p.read_text(encoding="utf-8"))[0]]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install 'cyllama[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    site = tmp_path / "site"
    api = (site / "api" / "generation" / "index.html").read_text(encoding="utf-8")
    # the API reference is generated from the docstrings, with the Sphinx roles turned into code
    assert 'id="cyllama.LLM.chat"' in api and "Answers a conversation" in api
    assert ":class:" not in api
    for page in guide_pages():
        rel = page.relative_to(DOCS).with_suffix("")
        out = site / ("index.html" if rel.name == "index" else rel / "index.html")
        assert out.is_file(), f"{page.name} was not built"


def test_skip_markers_need_a_reason() -> None:
    for page in list(DOCS.glob("*.md")) + list((DOCS / "guide").glob("*.md")):
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("<!-- skip"):
                assert SKIP.search(line), f"{page.name}: a skip marker without a reason: {line!r}"


def test_most_guide_samples_run() -> None:
    """The guide is mostly runnable: skipped blocks are the exception."""
    n_run = n_skip = 0
    for page in (DOCS / "guide").glob("*.md"):
        r, s = python_blocks(page.read_text(encoding="utf-8"))
        n_run, n_skip = n_run + len(r), n_skip + s
    assert n_run >= 30 and n_skip <= n_run // 3, (n_run, n_skip)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cyllama import _assets

    d = tmp_path_factory.mktemp("docs-run")
    (d / "model.gguf").symlink_to(_assets.default_model_path())
    (d / "draft.gguf").symlink_to(_assets.default_model_path())  # "a smaller model" in the samples
    (d / "speech.wav").symlink_to(_assets.speech_sample_path())
    return d


def _media(d: Path) -> None:
    if (d / "mmproj.gguf").exists():
        return
    np = pytest.importorskip("numpy")
    pytest.importorskip("gguf", reason="the tiny projector is written with the gguf package")
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_mmproj import make_mmproj, write_png

    make_mmproj(d / "mmproj.gguf")  # 576 wide: the default model's embeddings
    y, x = np.mgrid[0:32, 0:32]
    write_png(d / "photo.png", np.stack([x * 8, y * 8, (x + y) * 4], -1) % 256)


@pytest.mark.parametrize("page", guide_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_guide_samples_run(page: Path, workdir: Path) -> None:
    blocks, _ = python_blocks(page.read_text(encoding="utf-8"))
    code = "\n".join(blocks)
    for module in re.findall(r"^\s*(?:from|import) (langchain_core|openai|fastapi|cymongoose)\b", code, re.M):
        pytest.importorskip(module)
    if "mmproj.gguf" in code:
        _media(workdir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, f"{page.name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert proc.stdout.strip(), f"{page.name}: the samples printed nothing"
