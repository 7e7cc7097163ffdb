"""Builds the one C extension, `bertprep.preprocess._native` (the native tokenizing backend); all
other metadata is in setup.cfg, which cannot declare extension modules."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("bertprep.preprocess._native", ["preprocess/_native.c"],
                             extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wno-missing-braces"])])
