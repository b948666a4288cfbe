"""Builds the Cython extension(s) of ``_fast``; all metadata lives in pyproject.toml.

Set ``HARNESS_CYTHON_DEBUG=1`` to rebuild with bounds/wraparound/initialized checks on.
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("HARNESS_CYTHON_DEBUG", "") not in ("", "0")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}

extensions = [
    Extension(
        "_fast.tokens",
        ["_fast/tokens.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        extra_compile_args=["-O3"] if not DEBUG else ["-O0", "-g"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))
