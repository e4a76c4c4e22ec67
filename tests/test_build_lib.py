"""build_lib.py's quiet output: tools write to the build log, the terminal gets one line per
stage with progress, and a failure shows the log's tail; wheels get one file per library."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import build_lib  # noqa: E402

SCRIPT = "for i in $(seq 1 100); do echo \"[ $i%] Building CXX object obj$i.o\"; done; echo compiler said: {tail}; exit {rc}"


@pytest.fixture
def build_log(tmp_path, monkeypatch):
    monkeypatch.setattr(build_lib.BuildLog, "path", None)
    build_lib.BuildLog.open(tmp_path / "logs" / "build.log", verbose=False)
    return build_lib.BuildLog.path


def test_tool_output_goes_to_the_log_not_the_terminal(build_log, capsys):
    with build_lib.Stage("compile something"):
        build_lib.run(["sh", "-c", SCRIPT.format(tail="all good", rc=0)])
    out = capsys.readouterr().out
    assert "Building CXX object" not in out and "all good" not in out
    lines = out.splitlines()
    assert lines[0] == "[build_lib] compile something ..."
    assert lines[-1].startswith("[build_lib] compile something: done in ")
    assert [ln.split()[3] for ln in lines[1:-1]] == ["25%", "50%", "75%", "100%"]  # a line per quarter
    log = build_log.read_text()
    assert "obj1.o" in log and "obj100.o" in log and "all good" in log


def test_failure_prints_the_log_tail_and_where_the_log_is(build_log, capsys):
    with pytest.raises(SystemExit) as exc:
        with build_lib.Stage("compile something"):
            build_lib.run(["sh", "-c", SCRIPT.format(tail="error: no such file", rc=3)])
    assert exc.value.code == 3
    out = capsys.readouterr().out
    assert "error: no such file" in out
    assert "obj99.o" in out and "obj10.o" not in out  # the tail, not the whole log
    assert str(build_log) in out
    assert "compile something: failed in" in out


def test_wheel_ships_one_file_per_library(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libfoo.so.1.2.3").write_bytes(b"\x7fELF")
    (lib / "libfoo.so.1").symlink_to("libfoo.so.1.2.3")
    (lib / "libfoo.so").symlink_to("libfoo.so.1")
    (lib / "libbar-impl.so").write_bytes(b"\x7fELF")
    (lib / "footool").write_bytes(b"#!")
    (lib / "build-info.json").write_text("{}")
    assert build_lib.library_names(lib) == {"foo": "libfoo.so.1"}
    assert build_lib.shipped_files(lib) == {"libfoo.so.1", "libbar-impl.so", "footool", "build-info.json"}


def test_the_built_package_records_its_library_names():
    from cyllama._ffi import build_info, lib_dir

    names = build_info()["libraries"]
    for stem in ("llama", "ggml", "ggml-base", "mtmd", "whisper"):
        assert (lib_dir() / names[stem]).exists()
