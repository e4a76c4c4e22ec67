"""setuptools hook: `pip install .` runs build_lib.py so the package carries its native libraries."""

import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parent


class BuildNative(build_py):
    def run(self):
        subprocess.run([sys.executable, str(ROOT / "build_lib.py")], check=True, cwd=ROOT)
        super().run()
        self._one_file_per_library()

    def _one_file_per_library(self):
        """build_py copied each symlink of a library's chain as a full file: keep the soname's."""
        sys.path.insert(0, str(ROOT))
        from build_lib import shipped_files

        built = Path(self.build_lib) / "cyllama" / "lib"
        if getattr(self, "editable_mode", False) or not built.is_dir():
            return  # an editable install uses the source tree's folder, symlinks and all
        keep = shipped_files(ROOT / "cyllama" / "lib")
        for p in built.iterdir():
            if p.name not in keep:
                p.unlink()


class BinaryDistribution(Distribution):
    def has_ext_modules(self):  # the wheel carries platform-specific shared libraries
        return True


setup(cmdclass={"build_py": BuildNative}, distclass=BinaryDistribution)
