"""Builds fastfog's one compiled extension, fastfog._core (all else is in pyproject.toml)."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

# FASTFOG_DEBUG_BUILD=1: keep bounds checks and asserts, add line tracing, no -O3.
debug = os.environ.get("FASTFOG_DEBUG_BUILD") == "1"
directives = {"language_level": "3", "boundscheck": debug, "wraparound": debug, "cdivision": True}
if debug:
    directives["linetrace"] = True

core = Extension(
    "fastfog._core",
    ["fastfog/_core.pyx"],
    extra_compile_args=["-O0", "-g"] if debug else ["-O3"],
    define_macros=[("_GNU_SOURCE", None)] + ([("CYTHON_TRACE", "1")] if debug else []),
)

# fastfog bench's load generator and origins: a second, small extension (the proxy never imports it).
engine = Extension(
    "fastfog.bench._engine",
    ["fastfog/bench/_engine.pyx"],
    extra_compile_args=["-O0", "-g"] if debug else ["-O3"],
    define_macros=[("_GNU_SOURCE", None)],
)

setup(ext_modules=cythonize([core, engine], compiler_directives=directives, include_path=["fastfog"]))
