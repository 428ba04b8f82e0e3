"""Build of rnnjax's optional native CPU kernels (the fused LSTM / GRU sequence, XLA FFI).

Everything else about the package is in pyproject.toml. The extension is optional: a failed
compile (no C++ compiler, no headers) never fails the install, and ``rnnjax._native.available()``
then says why the XLA path is used.
"""

import importlib.util
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name} is not installed in the build environment")
    return list(spec.submodule_search_locations)[0]


class BuildExt(build_ext):
    """Fill in the include and library paths of jaxlib and scipy-openblas32 at build time."""

    def build_extension(self, ext):
        from setuptools.errors import CompileError

        try:
            ffi_include = os.path.join(_package_dir("jaxlib"), "include")
            blas = _package_dir("scipy_openblas32")
        except FileNotFoundError as e:
            raise CompileError(str(e)) from e
        ext.include_dirs += [ffi_include, os.path.join(blas, "include")]
        ext.library_dirs += [os.path.join(blas, "lib")]
        super().build_extension(ext)


kernels = Extension(
    "rnnjax._native._kernels",
    sources=["rnnjax/_native/kernels.cc"],
    libraries=["scipy_openblas"],
    language="c++",
    # -fno-trapping-math lets GCC vectorise the branch-free gate math (compares become selects)
    # RNNJAX_NATIVE_CFLAGS adds flags (e.g. "-march=native" for a build used only on this machine)
    extra_compile_args=["-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math",
                        *os.environ.get("RNNJAX_NATIVE_CFLAGS", "").split()],
    # installed next to scipy_openblas32 in site-packages; an editable install preloads the
    # library from scipy_openblas32.get_lib_dir() before importing the extension
    extra_link_args=["-Wl,-rpath,$ORIGIN/../../scipy_openblas32/lib"],
    optional=True,
)

setup(ext_modules=[kernels], cmdclass={"build_ext": BuildExt})
