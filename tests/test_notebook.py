"""notebooks/quickstart.ipynb runs top to bottom in a Jupyter kernel (nbclient + ipykernel) and
shows what it promises: streamed text, the stats table, the batch, parsed JSON and the plot."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install 'cyllama[docs]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install 'cyllama[docs]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install 'cyllama[docs]')")
pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'cyllama[docs]')")


def test_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def _outputs(cell) -> list[dict]:
    return [dict(o) for o in cell.get("outputs", [])]


def _data(cell, mime: str) -> list[str]:
    out = []
    for o in _outputs(cell):
        v = o.get("data", {}).get(mime)
        if v is not None:
            out.append("".join(v) if isinstance(v, list) else v)
    return out


def test_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel inherits the environment: the checkout on its path, no GUI backend needed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - t0
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:
        errors = [o for o in _outputs(c) if o.get("output_type") == "error"]
        assert not errors, f"{c.source[:80]!r} failed: {errors[0].get('ename')}: {errors[0].get('evalue')}"

    def cell(marker: str):
        return next(c for c in code if marker in c.source)

    # streaming: one display, updated in place to the whole answer
    stream = cell("handle.update")
    shown = _data(stream, "text/markdown")
    assert len(shown) == 1 and len(shown[0].strip()) > 20, shown
    # GenerationStats._repr_html_
    stats = _data(cell("llm.last_stats"), "text/html")
    assert stats and "<caption>GenerationStats</caption>" in stats[0] and "tokens_per_second" in stats[0]
    # the batch: a table row per prompt
    table = _data(cell("batch_generate("), "text/html")
    assert table and table[0].count("<tr>") == 5
    # structured output: the parsed dict has the schema's fields
    person = _data(cell("json_schema=schema"), "text/plain")
    assert person and all(k in person[0] for k in ("'name'", "'age'", "'hobbies'"))
    # the plot
    assert _data(cell("plt.show()"), "image/png")
    print(f"notebook executed in {elapsed:.1f} s")
