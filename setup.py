"""Build of the optional C kernels (everything else is in pyproject.toml).

optional=True: without a C compiler the install still succeeds and the layers use their NumPy code.
-ffp-contract=off: no fused multiply-adds where the CPU has them, so the kernels round as NumPy's
element-wise loops do (the solver's SGD step gives the same bits either way).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("vggtool.layers._kernels", ["vggtool/layers/_kernels.c"],
                             depends=["vggtool/layers/_kernels_impl.h"],
                             extra_compile_args=["-O3", "-ffp-contract=off"], optional=True)])
