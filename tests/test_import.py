"""Import-time behaviour: ``import cyllama`` parses no declarations and loads no heavy module,
and the generated bindings module is regenerated when the declarations change."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, pythonpath: Path = ROOT) -> str:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=pythonpath, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_loads_no_parser_and_no_heavy_module():
    loaded = json.loads(_python(
        "import sys, json, cyllama; "
        "print(json.dumps({m: m in sys.modules for m in "
        "('pycparser', 'cffi', 'numpy', 'jinja2', 'requests', 'pydantic', 'cyllama.download')}))"))
    assert loaded == dict.fromkeys(loaded, False)


def test_ffi_comes_from_the_generated_module():
    out = _python("from cyllama._ffi import ffi; import cyllama._ffi._bindings as b; "
                  "print(type(ffi).__module__, ffi is b.ffi, ffi.sizeof('struct llama_batch'))")
    assert out.split()[:2] == ["_cffi_backend", "True"]
    assert int(out.split()[2]) > 0


def test_lazy_numpy_and_lazy_exports_still_work():
    out = _python("import cyllama, sys; from cyllama import download_model, list_cached_models; "
                  "from cyllama._lazy_numpy import np; a = np.zeros(3, dtype=np.float32); "
                  "print(isinstance(a, np.ndarray), 'numpy' in sys.modules, callable(download_model))")
    assert out.split() == ["True", "True", "True"]


def _package_copy(tmp_path: Path) -> Path:
    """A copy of the package (native libraries linked, not copied) to edit freely."""
    dest = tmp_path / "cyllama"
    shutil.copytree(ROOT / "cyllama", dest, ignore=shutil.ignore_patterns("lib", "include", "__pycache__"))
    (dest / "lib").symlink_to(ROOT / "cyllama" / "lib", target_is_directory=True)
    return tmp_path


def test_stale_bindings_module_is_regenerated(tmp_path):
    root = _package_copy(tmp_path)
    bindings = root / "cyllama" / "_ffi" / "_bindings.py"
    bindings.write_text("raise RuntimeError('stale')\n")
    out = _python("import cyllama._ffi as f; print(f.ffi.typeof('llama_token'))", root)
    assert "int" in out
    text = bindings.read_text()
    assert "_cffi_backend.FFI(" in text and "CDEFS_DIGEST" in text
    # an edited declaration makes the module stale again: the new declaration is seen
    cdef = root / "cyllama" / "_ffi" / "cdefs" / "llama.h"
    cdef.write_text(cdef.read_text() + "\nint cyllama_test_marker(int);\n")
    out = _python("import cyllama._ffi as f; print('cyllama_test_marker' in dir(f.load_llama()))", root)
    assert out.strip() == "True"
    assert "cyllama_test_marker" in bindings.read_text()


def test_unwritable_bindings_module_falls_back_to_parsing(tmp_path):
    root = _package_copy(tmp_path)
    bindings = root / "cyllama" / "_ffi" / "_bindings.py"
    bindings.unlink()
    bindings.mkdir()  # neither importable nor replaceable: as in a read-only installation
    out = _python("import cyllama._ffi as f; print(type(f.ffi).__module__, f.ffi.typeof('llama_token'))", root)
    assert out.split()[0] == "cffi.api"
    assert bindings.is_dir()


def test_every_c_type_the_package_names_parses_with_the_generated_module():
    """The out-of-line module's type parser is stricter than cffi's (``void(const char *)`` fails
    where ``void(*)(const char *)`` works): a type string only reached at run time would fail there."""
    import re

    from cyllama._ffi import ffi

    pattern = re.compile(r'ffi\.(new|cast|callback|typeof|sizeof|from_buffer|offsetof|alignof)\(\s*(["\'])(.+?)\2')
    bad = []
    for path in (ROOT / "cyllama").rglob("*.py"):
        if path.name == "_bindings.py":
            continue
        for m in pattern.finditer(path.read_text()):
            kind, ctype = m.group(1), m.group(3)
            try:
                ffi.typeof(ctype)
            except ffi.error as exc:
                if not (kind == "callback" and "function type" in str(exc)):
                    bad.append(f"{path.name}: {ctype!r}: {str(exc).splitlines()[0]}")
    assert not bad, bad
