"""Builds the C extensions: `bertprep.preprocess._native` (the native tokenizing backend),
`bertprep.shards._gather` (rows of memory-mapped shards, for the loader) and
`bertprep.trainer._loader` (the loader's shuffle permutation and --mask-prob re-masking). Each has a pure Python fallback.
All other metadata is in setup.cfg, which cannot declare extension modules."""

from setuptools import Extension, setup

FLAGS = ["-O3", "-std=c99", "-Wall", "-Wno-missing-braces"]
setup(ext_modules=[Extension("bertprep.preprocess._native", ["preprocess/_native.c"], extra_compile_args=FLAGS),
                   Extension("bertprep.shards._gather", ["shards/_gather.c"], extra_compile_args=FLAGS),
                   Extension("bertprep.trainer._loader", ["trainer/_loader.c"], extra_compile_args=FLAGS)])
