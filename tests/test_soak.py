"""A one-minute run of ``benchmarks/soak_server.py`` (mixed streaming, cancelled and malformed
requests against ``cyllama serve``): every valid request answered completely, resident memory
bounded, the server idle and answering afterwards. Skip it with ``CYLLAMA_SKIP_SOAK=1``; run it
longer with ``CYLLAMA_SOAK_MINUTES`` (or run the script by hand: 30 minutes by default)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "soak_server.py"


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("CYLLAMA_SKIP_SOAK")), reason="CYLLAMA_SKIP_SOAK is set")
def test_soak_server(model_path) -> None:
    spec = importlib.util.spec_from_file_location("soak_server", SCRIPT)
    soak_server = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("soak_server", soak_server)  # dataclasses look their module up there
    spec.loader.exec_module(soak_server)
    minutes = float(os.environ.get("CYLLAMA_SOAK_MINUTES", "1"))
    report = soak_server.soak(minutes=minutes, clients=6, model=model_path, threads=2, slots=4)
    assert report.ok, "\n".join(report.lines())
    for kind in ("stream", "complete", "cancel_stream", "cancel_request", "malformed"):
        assert report.counts.get(kind, 0) > 0, report.counts
    assert report.metrics["requests_cancelled_total"] > 0 and report.metrics["client_disconnects_total"] > 0
    assert report.rss_mb == [] or report.growth_mb is not None
