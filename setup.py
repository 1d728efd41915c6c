"""Build of the optional C kernels (everything else is in pyproject.toml).

optional=True: without a C compiler the install still succeeds and the layers use their NumPy code.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("vggtool.layers._kernels", ["vggtool/layers/_kernels.c"],
                             depends=["vggtool/layers/_kernels_impl.h"],
                             extra_compile_args=["-O3"], optional=True)])
