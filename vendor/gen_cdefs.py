#!/usr/bin/env python3
"""Regenerate cyllama's cffi declarations from the pinned C headers.

cffi's ABI mode reads plain C declarations, without preprocessor directives, export macros or
attributes. This script runs each public header through the C preprocessor with stub headers
(so only the header's own declarations come out, comments kept) and writes:

* ``cyllama/_ffi/cdefs/llama.h``   all of ``llama.h``
* ``cyllama/_ffi/cdefs/gguf.h``    all of ``gguf.h``
* ``cyllama/_ffi/cdefs/mtmd.h``    all of ``mtmd.h`` and ``mtmd-helper.h``
* ``cyllama/_ffi/cdefs/whisper.h`` all of ``whisper.h``
* ``cyllama/_ffi/cdefs/ggml.h``    the part of ggml, ggml-cpu, ggml-backend and ggml-opt that those
  headers and cyllama use (selected by name in ``GGML_WANTED`` below)

Run it after changing the pinned sources, review the diff, and run ``tests/test_abi.py``.

Usage: ``python vendor/gen_cdefs.py [--llama-src PATH] [--whisper-src PATH]`` (defaults: the
sources ``build_lib.py`` unpacked into the cache).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "cyllama" / "_ffi" / "cdefs"
sys.path.insert(0, str(ROOT))

STUBS = ["ggml.h", "ggml-cpu.h", "ggml-backend.h", "ggml-opt.h", "ggml-alloc.h", "gguf.h", "llama.h",
         "mtmd.h", "stddef.h", "stdint.h", "stdio.h", "stdbool.h", "stdlib.h", "string.h"]
MACRO_PREFIXES = ("LLAMA_", "GGUF_", "WHISPER_", "MTMD_", "GGML_")
DEFINES = ["-DGGML_API=", "-DGGML_BACKEND_API=", "-DGGML_RESTRICT=", "-DGGML_NORETURN=",
           "-DGGML_ATTRIBUTE_FORMAT(...)=", "-DGGML_DEPRECATED(f,h)=f",
           "-DDEPRECATED(f,h)=f", "-DMTMD_API=", "-DLLAMA_API=", "-DWHISPER_API="]

# The ggml declarations cyllama needs: the types the other headers use, backend discovery (and
# backend-specific entry points such as the RPC backend's ggml_backend_rpc_add_server, found through
# ggml_backend_reg_get_proc_address), the abort hook and the helpers behind system info. Anything named here is copied verbatim from the ggml headers.
GGML_WANTED = {
    "enum": ["ggml_status", "ggml_type", "ggml_log_level", "ggml_numa_strategy", "ggml_sched_priority",
             "ggml_backend_dev_type", "ggml_opt_optimizer_type", "ggml_backend_buffer_usage"],
    "struct": ["ggml_threadpool_params", "ggml_backend_dev_caps", "ggml_backend_dev_props",
               "ggml_opt_optimizer_params"],
    "typedef": ["ggml_abort_callback", "ggml_log_callback", "ggml_backend_sched_eval_callback",
                "ggml_backend_dev_t", "ggml_backend_buffer_type_t", "ggml_backend_buffer_t",
                "ggml_backend_reg_t", "ggml_backend_t", "ggml_threadpool_t", "ggml_opt_dataset_t",
                "ggml_opt_context_t", "ggml_opt_result_t", "ggml_opt_get_optimizer_params",
                "ggml_opt_epoch_callback", "ggml_fp16_t", "ggml_abort_callback_t"],
    "function": [
        "ggml_time_init", "ggml_time_ms", "ggml_time_us", "ggml_type_name", "ggml_type_size",
        "ggml_blck_size", "ggml_type_sizef", "ggml_is_quantized", "ggml_log_set", "ggml_nelements",
        "ggml_nbytes", "ggml_get_name", "ggml_op_desc", "ggml_fp16_to_fp32", "ggml_fp32_to_fp16",
        "ggml_backend_load_all", "ggml_backend_load_all_from_path", "ggml_backend_load",
        "ggml_backend_reg_count", "ggml_backend_reg_get", "ggml_backend_reg_by_name",
        "ggml_backend_reg_name", "ggml_backend_reg_dev_count", "ggml_backend_reg_dev_get",
        "ggml_backend_reg_get_proc_address", "ggml_set_abort_callback",
        "ggml_backend_dev_count", "ggml_backend_dev_get", "ggml_backend_dev_by_name",
        "ggml_backend_dev_by_type", "ggml_backend_dev_name", "ggml_backend_dev_description",
        "ggml_backend_dev_memory", "ggml_backend_dev_type", "ggml_backend_dev_get_props",
        "ggml_backend_dev_backend_reg", "ggml_backend_dev_buffer_type", "ggml_backend_buft_name",
        "ggml_cpu_has_sse3", "ggml_cpu_has_ssse3", "ggml_cpu_has_avx", "ggml_cpu_has_avx_vnni",
        "ggml_cpu_has_avx2", "ggml_cpu_has_bmi2", "ggml_cpu_has_f16c", "ggml_cpu_has_fma",
        "ggml_cpu_has_avx512", "ggml_cpu_has_neon", "ggml_cpu_has_arm_fma", "ggml_cpu_has_fp16_va",
        "ggml_cpu_has_dotprod", "ggml_cpu_has_matmul_int8", "ggml_cpu_has_sve",
        "ggml_threadpool_params_default", "ggml_threadpool_params_init",
        "ggml_opt_get_default_optimizer_params", "ggml_opt_get_constant_optimizer_params",
        "ggml_opt_dataset_init", "ggml_opt_dataset_free", "ggml_opt_result_init",
        "ggml_opt_result_free", "ggml_free",
    ],
}


def preprocess(header: Path, include_dirs: list[Path], stub_dir: Path, comments: bool) -> str:
    """Runs the C preprocessor over one header with every #include answered by an empty stub."""
    src = stub_dir / "_input.h"
    src.write_text(header.read_text())
    cmd = ["cc", "-E", "-P", "-undef", "-nostdinc", "-x", "c", *DEFINES, f"-I{stub_dir}", str(src)]
    if comments:
        cmd.insert(2, "-C")
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return text.replace("#pragma once", "")


def macro_values(headers: list[Path]) -> dict[str, int]:
    """Integer-valued #define constants with our prefixes, resolved through each other."""
    raw: dict[str, str] = {}
    for h in headers:
        for m in re.finditer(r"^\s*#\s*define\s+(\w+)\s+([^/\n]+?)\s*(//.*)?$", h.read_text(), re.M):
            if m.group(1).startswith(MACRO_PREFIXES):
                raw.setdefault(m.group(1), m.group(2).strip())
    values: dict[str, int] = {}
    for _ in range(3):
        for name, expr in raw.items():
            e = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", expr)
            e = re.sub(r"\b[A-Z_][A-Z0-9_]*\b", lambda m: str(values.get(m.group(0), m.group(0))), e)
            if re.fullmatch(r"[-+]?\s*(0x[0-9a-fA-F]+|\d+)", e.strip()):
                values[name] = int(e.replace(" ", ""), 0)
    return values


def statements(text: str) -> list[str]:
    """Splits preprocessed C (without comments) into top-level declarations."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "{(":
            depth += 1
        elif ch in "})":
            depth -= 1
        elif ch == ";" and depth == 0:
            out.append(text[start:i + 1].strip())
            start = i + 1
    return [s for s in out if s]


def declared_name(stmt: str) -> tuple[str, str] | None:
    flat = " ".join(stmt.split())
    if m := re.match(r"^typedef\b.*?\(\s*\*\s*(\w+)\s*\)\s*\(", flat):
        return "typedef", m.group(1)
    if flat.startswith("typedef"):
        if m := re.search(r"(\w+)\s*(\[[^\]]*\])?\s*;$", flat):
            return "typedef", m.group(1)
    if m := re.match(r"^enum\s+(\w+)\s*\{", flat):
        return "enum", m.group(1)
    if m := re.match(r"^struct\s+(\w+)\s*\{", flat):
        return "struct", m.group(1)
    if m := re.search(r"(\w+)\s*\((?:[^()]|\([^()]*\))*\)\s*;$", flat):
        return "function", m.group(1)
    return None


def substitute_macros(text: str, values: dict[str, int], keep: set[str]) -> str:
    """Replaces ggml macro names (which cffi cannot see) with their values."""
    def repl(m: re.Match) -> str:
        name = m.group(0)
        return str(values[name]) if name in values and name not in keep else name
    return re.sub(r"\bGGML_[A-Z0-9_]+\b", repl, text)


def define_block(values: dict[str, int], prefix: str) -> str:
    lines = [f"#define {k} {v}" for k, v in values.items() if k.startswith(prefix) and not k.endswith("_H")]
    return "\n".join(lines) + "\n" if lines else ""


def tidy(text: str) -> str:
    text = re.sub(r"\n\s*\n(\s*\n)+", "\n\n", text)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip() + "\n"


def banner(what: str) -> str:
    return (f"// cffi declarations generated by vendor/gen_cdefs.py from {what}.\n"
            "// Do not edit by hand: regenerate, review the diff, run tests/test_abi.py.\n\n")


def main(argv: list[str] | None = None) -> int:
    import build_lib  # the pinned sources and the cache they unpack into

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-src", type=Path)
    ap.add_argument("--whisper-src", type=Path)
    args = ap.parse_args(argv)
    llama = args.llama_src or build_lib.unpack(build_lib.SOURCES["llama.cpp"])
    whisper = args.whisper_src or build_lib.unpack(build_lib.SOURCES["whisper.cpp"])
    ggml_inc = llama / "ggml" / "include"
    ggml_headers = [ggml_inc / h for h in ("ggml.h", "ggml-cpu.h", "ggml-backend.h", "ggml-opt.h")]
    values = macro_values(ggml_headers + [llama / "include" / "llama.h", ggml_inc / "gguf.h",
                                          whisper / "include" / "whisper.h"])
    OUT.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp)
        for name in STUBS:
            (stub / name).write_text("")

        # ggml: selected declarations, in header order
        wanted = {(kind, n) for kind, names in GGML_WANTED.items() for n in names}
        chosen, seen = [], set()
        for h in ggml_headers:
            for stmt in statements(preprocess(h, [], stub, comments=False)):
                key = declared_name(stmt)
                if key in wanted and key not in seen:
                    seen.add(key)
                    chosen.append(re.sub(r"^extern ", "", " ".join(stmt.split())) if key[0] == "function" else stmt)
        missing = wanted - seen
        if missing:
            raise SystemExit(f"ggml declarations not found in the headers: {sorted(missing)}")
        ggml_text = ("struct ggml_context;\nstruct ggml_tensor;\nstruct ggml_cgraph;\n"
                     "struct ggml_threadpool;\nstruct ggml_backend_device;\nstruct ggml_backend_reg;\n"
                     "struct ggml_backend;\nstruct ggml_backend_buffer;\nstruct ggml_backend_buffer_type;\n"
                     "struct ggml_opt_dataset;\nstruct ggml_opt_context;\nstruct ggml_opt_result;\n\n")
        ggml_defines = {k: v for k, v in values.items()
                        if k in ("GGML_MAX_DIMS", "GGML_MAX_NAME", "GGML_MAX_SRC", "GGML_DEFAULT_N_THREADS")}
        (OUT / "ggml.h").write_text(banner("ggml.h, ggml-cpu.h, ggml-backend.h, ggml-opt.h (a subset)")
                                    + define_block(ggml_defines, "GGML_") + "\n" + ggml_text
                                    + tidy("\n\n".join(chosen)))

        for out_name, headers, prefix in (
            ("llama.h", [llama / "include" / "llama.h"], "LLAMA_"),
            ("gguf.h", [ggml_inc / "gguf.h"], "GGUF_"),
            ("mtmd.h", [llama / "tools/mtmd/mtmd.h", llama / "tools/mtmd/mtmd-helper.h"], "MTMD_"),
            ("whisper.h", [whisper / "include" / "whisper.h"], "WHISPER_"),
        ):
            body = "\n".join(preprocess(h, [], stub, comments=True) for h in headers)
            body = substitute_macros(body, values, keep=set())
            names = ", ".join(h.name for h in headers)
            (OUT / out_name).write_text(banner(names) + define_block(values, prefix) + "\n" + tidy(body))
        print(f"wrote {', '.join(sorted(p.name for p in OUT.glob('*.h')))} in {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
