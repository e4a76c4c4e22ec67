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


class BinaryDistribution(Distribution):
    def has_ext_modules(self):  # the wheel carries platform-specific shared libraries
        return True


setup(cmdclass={"build_py": BuildNative}, distclass=BinaryDistribution)
