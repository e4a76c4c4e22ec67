"""ABI guard: the cffi declarations must match the pinned headers and the built libraries.

cffi's ABI mode trusts the declarations; a drift between them and the C headers would corrupt
memory silently. A C probe compiled against the headers prints sizeof/offsetof of every declared
struct (and its nested fields) and the value of every enum constant; they must equal what ffi
computes. Every declared function must resolve in the library that should export it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cffi
import pytest

from cyllama._ffi import ffi, lib_dir, load_llama, load_mtmd, load_whisper
from cyllama._ffi._generate import CDEF_DIR as _CDEF_DIR, CDEF_FILES as _CDEF_FILES

INCLUDE = lib_dir().parent / "include"
HEADERS = ["ggml.h", "ggml-cpu.h", "ggml-backend.h", "ggml-opt.h", "gguf.h", "llama.h", "mtmd.h",
           "mtmd-helper.h", "whisper.h"]


def _declarations_by_file() -> dict[str, set[str]]:
    """Declaration keys ('function x', 'struct y', ...) each cdef file adds."""
    seen: set[str] = set()
    out: dict[str, set[str]] = {}
    f = cffi.FFI()
    for name in _CDEF_FILES:
        f.cdef((_CDEF_DIR / name).read_text())
        keys = set(f._parser._declarations)
        out[name] = keys - seen
        seen = keys
    return out


DECLS = _declarations_by_file()
ALL = set().union(*DECLS.values())


def _complete_structs() -> list[str]:
    names = []
    for key in sorted(ALL):
        kind, _, name = key.partition(" ")
        if kind in ("struct", "union") and not name.startswith("$"):
            try:
                ffi.sizeof(f"{kind} {name}")
            except (ValueError, ffi.error):  # opaque (incomplete) type
                continue  # opaque
            names.append(f"{kind} {name}")
    return names


def _field_paths(ctype: str) -> list[tuple[str, object]]:
    """Field designators, recursing into nested structs declared inline (anonymous types)."""
    out = []

    def walk(t: object, prefix: str) -> None:
        for fname, field in t.fields:  # type: ignore[attr-defined]
            path = f"{prefix}{fname}"
            out.append((path, field))
            ft = field.type
            if ft.kind == "struct" and ft.cname.startswith("struct $"):
                walk(ft, path + ".")

    walk(ffi.typeof(ctype), "")
    return out


def _offset(ctype: str, path: str) -> int:
    t = ffi.typeof(ctype)
    total = 0
    for part in path.split("."):
        total += ffi.offsetof(t, part)
        t = dict(t.fields)[part].type
    return total


@pytest.fixture(scope="module")
def probe_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to build the ABI probe")
    if not (INCLUDE / "llama.h").exists():
        pytest.fail(f"headers missing from {INCLUDE}: run build_lib.py")
    lines = [f'#include "{h}"' for h in HEADERS] + ["#include <stddef.h>", "#include <stdio.h>", "int main(void) {"]
    for ctype in _complete_structs():
        lines.append(f'printf("sizeof {ctype} %zu\\n", sizeof({ctype}));')
        for path, _ in _field_paths(ctype):
            lines.append(f'printf("offsetof {ctype} {path} %zu\\n", offsetof({ctype}, {path}));')
    for key in sorted(ALL):
        kind, _, name = key.partition(" ")
        if kind == "enum" and not name.startswith("$"):
            for const in ffi.typeof(f"enum {name}").relements:
                lines.append(f'printf("enum {const} %lld\\n", (long long){const});')
        elif kind == "macro":
            lines.append(f'printf("macro {name} %lld\\n", (long long)({name}));')
    lines += ["return 0;", "}"]
    tmp = tmp_path_factory.mktemp("abi")
    src, exe = tmp / "probe.c", tmp / "probe"
    src.write_text("\n".join(lines))
    subprocess.run([cc, "-w", f"-I{INCLUDE}", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    values = {}
    for line in out.splitlines():
        key, _, val = line.rpartition(" ")
        values[key] = int(val)
    return values


def test_struct_sizes_and_offsets(probe_output: dict[str, int]) -> None:
    mismatches = []
    structs = _complete_structs()
    assert "struct llama_context_params" in structs and "struct whisper_full_params" in structs
    for ctype in structs:
        if probe_output[f"sizeof {ctype}"] != ffi.sizeof(ctype):
            mismatches.append(f"sizeof {ctype}: C {probe_output[f'sizeof {ctype}']} != ffi {ffi.sizeof(ctype)}")
        for path, _ in _field_paths(ctype):
            c = probe_output[f"offsetof {ctype} {path}"]
            py = _offset(ctype, path)
            if c != py:
                mismatches.append(f"offsetof {ctype}.{path}: C {c} != ffi {py}")
    assert not mismatches, "\n".join(mismatches)


def test_enum_and_macro_values(probe_output: dict[str, int]) -> None:
    checked = 0
    mismatches = []
    for key in sorted(ALL):
        kind, _, name = key.partition(" ")
        if kind == "enum" and not name.startswith("$"):
            for const, value in ffi.typeof(f"enum {name}").relements.items():
                checked += 1
                if probe_output[f"enum {const}"] != value:
                    mismatches.append(f"{const}: C {probe_output[f'enum {const}']} != ffi {value}")
    lib = load_llama()
    for key in ALL:
        kind, _, name = key.partition(" ")
        if kind == "macro":
            checked += 1
            if probe_output[f"macro {name}"] != getattr(lib, name):
                mismatches.append(f"{name}: C {probe_output[f'macro {name}']} != ffi {getattr(lib, name)}")
    assert checked > 200
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("cdef_file,loader", [
    ("ggml.h", load_llama), ("gguf.h", load_llama), ("llama.h", load_llama),
    ("mtmd.h", load_mtmd), ("whisper.h", load_whisper),
])
def test_every_function_resolves(cdef_file: str, loader) -> None:
    lib = loader()
    funcs = sorted(k.split(" ", 1)[1] for k in DECLS[cdef_file] if k.startswith("function "))
    assert funcs, cdef_file
    missing = []
    for name in funcs:
        try:
            getattr(lib, name)
        except AttributeError:
            missing.append(name)
    assert not missing, f"declared in {cdef_file} but not exported: {missing}"
