"""Build sharpattn and its compiled extension sharpattn._C.

The CPU kernels are always built. The CUDA kernels are built when a CUDA toolkit whose major
version matches torch.version.cuda is found (CUDA_HOME, nvcc on PATH, or the pip
``cuda-toolkit`` wheels under site-packages/nvidia/cuXX). Environment switches:

  SHARPATTN_FORCE_CUDA=1   build the CUDA kernels even without a visible GPU (build containers);
                           fail loudly if no matching toolkit is found
  SHARPATTN_FORCE_CPU=1    never build the CUDA kernels
  TORCH_CUDA_ARCH_LIST     architectures to compile for (default below)
  MAX_JOBS                 parallel compile jobs (ninja)

What was built is written to sharpattn/_build_config.py and reported by sharpattn.build_info().
torch must already be installed: build with ``pip install --no-build-isolation .``.
"""

import ast
import glob
import os
import pprint
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import find_namespace_packages, setup

ROOT = Path(__file__).resolve().parent


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _wheel_cuda_home(cuda_major):
    """The CUDA toolkit that the `cuda-toolkit[nvcc]` wheels unpack under site-packages."""
    for site_dir in sys.path:
        candidate = Path(site_dir) / "nvidia" / f"cu{cuda_major}"
        if (candidate / "bin" / "nvcc").is_file():
            return str(candidate)
    return None


def _nvcc_major(cuda_home):
    try:
        text = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", text)
    return int(match.group(1)) if match else None


def _find_cuda_home(torch_cuda_major):
    """First toolkit whose nvcc major version matches torch's CUDA, or (None, reasons)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  _wheel_cuda_home(torch_cuda_major)]
    nvcc = subprocess.run(["which", "nvcc"], capture_output=True, text=True).stdout.strip()
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    reasons = []
    for home in [c for c in candidates if c]:
        major = _nvcc_major(home)
        if major == torch_cuda_major:
            return home, reasons
        reasons.append(f"{home}: nvcc major {major}")
    return None, reasons


def _cuda_plan():
    """Decide whether to build the CUDA kernels; returns (cuda_home or None, reason)."""
    import torch

    if _env_flag("SHARPATTN_FORCE_CPU"):
        return None, "SHARPATTN_FORCE_CPU is set"
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is a CPU-only build"
    torch_major = int(torch.version.cuda.split(".")[0])
    home, reasons = _find_cuda_home(torch_major)
    if home is None:
        reason = (f"no CUDA {torch_major}.x toolkit found (torch {torch.__version__} uses CUDA "
                  f"{torch.version.cuda}); tried: {reasons or 'nothing'}. Install the matching "
                  f"'cuda-toolkit[nvcc,cccl,crt,cudart]' wheels or set CUDA_HOME")
        if _env_flag("SHARPATTN_FORCE_CUDA"):
            raise RuntimeError("SHARPATTN_FORCE_CUDA=1 but " + reason)
        return None, reason
    # No visible GPU is no reason to skip: a GPU-less build container is the usual case.
    return home, f"CUDA {torch.version.cuda} toolkit at {home}"


def _default_arch_list(cuda_home):
    # CUDA 13 dropped offline compilation for sm_70 (Volta); Turing is its oldest target.
    major = _nvcc_major(cuda_home) or 0
    return "7.5;8.0;8.6;8.9;9.0+PTX" if major >= 13 else "7.0;7.5;8.0;8.6;8.9;9.0+PTX"


def _cudart_link_dir(cuda_home, build_dir):
    """The wheels ship only libcudart.so.N; give the linker the unversioned name it asks for."""
    lib_dirs = [d for d in ("lib64", "lib") if (Path(cuda_home) / d).is_dir()]
    for d in lib_dirs:
        if (Path(cuda_home) / d / "libcudart.so").exists():
            return [str(Path(cuda_home) / d)]
    for d in lib_dirs:
        versioned = sorted(glob.glob(str(Path(cuda_home) / d / "libcudart.so.*")))
        if versioned:
            link_dir = Path(build_dir) / "cudart-link"
            link_dir.mkdir(parents=True, exist_ok=True)
            target = link_dir / "libcudart.so"
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(versioned[0])
            return [str(link_dir), str(Path(cuda_home) / d)]
    return [str(Path(cuda_home) / d) for d in lib_dirs]


def _write_build_config(config):
    """Record the build under this interpreter's extension suffix, keeping the others.

    One source tree can hold in-place builds of sharpattn._C for several Pythons (CI builds
    today's stack on 3.11 and the GPU machine's on 3.12): each must report its own torch.
    """
    path = ROOT / "sharpattn" / "_build_config.py"
    builds = {}
    if path.is_file():
        text = path.read_text()
        if "BUILDS = " in text:  # an older file (one build, no BUILDS) is dropped
            builds = ast.literal_eval(text.split("BUILDS = ", 1)[1])
    builds[sysconfig.get_config_var("EXT_SUFFIX")] = config
    path.write_text('"""Written by setup.py: what sharpattn._C was compiled with, per extension '
                    'suffix."""\n\nBUILDS = ' + pprint.pformat(builds) + "\n")


def _extensions():
    import torch

    cuda_home, cuda_reason = _cuda_plan()
    if cuda_home is not None:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _default_arch_list(cuda_home))
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx_flags = ["-O3"]  # the C++ standard comes from torch (C++20 for recent releases)
    if cuda_home is None:
        ext = CppExtension("sharpattn._C", sources, extra_compile_args={"cxx": cxx_flags},
                           py_limited_api=False)
    else:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        ext = CUDAExtension(
            "sharpattn._C", sources,
            extra_compile_args={"cxx": cxx_flags + ["-DSHARPATTN_WITH_CUDA"],
                                # No --use_fast_math: approximate logf/expf and divisions
                                # would break the 2e-6 float32 agreement with the reference
                                # and move hard-mask decisions near z = 0.
                                "nvcc": ["-O3", "-DSHARPATTN_WITH_CUDA", "-lineinfo"]},
            library_dirs=_cudart_link_dir(cuda_home, ROOT / "build"),
        )
    _write_build_config({
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "with_cuda": cuda_home is not None,
        "cuda_reason": cuda_reason,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if cuda_home else None,
    })
    return [ext]


def _build_ext():
    # Plain BuildExtension (its defaults keep the ABI suffix): torch 2.11's with_options() passes
    # its keywords on to setuptools' Command.__init__, which setuptools 77.0.3 rejects already in
    # metadata generation (78.1.1 to 80.9.0 got through that step; 80.9 and 81.0 built).
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension


def _require_torch():
    """The build imports torch; pip's default build isolation hides the installed one, and an
    isolated build must not fetch a second torch (pyproject.toml says why)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("sharpattn: building needs the torch you run, and this build environment has none "
                 "(pip's build isolation hides it): install torch first, then "
                 "pip install --no-build-isolation .")


_require_torch()
setup(
    # kernels/ sits at the top of the repo (the layout shows the three backends side by side)
    # and is installed as sharpattn.kernels.
    # Namespace discovery: the config folders (YAML only, no __init__.py) are packages too, so
    # setuptools ships them without warning that they would be ignored.
    packages=find_namespace_packages(include=["sharpattn", "sharpattn.*"]) + ["sharpattn.kernels"],
    package_dir={"sharpattn.kernels": "kernels"},
    # The training configs (one YAML per Table I row) ship inside the package; only the config
    # folders hold YAML.
    package_data={"": ["*.yaml"]},
    # The legacy License field, read by every setuptools (pyproject.toml says why it is here).
    license="BSD-3-Clause",
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
)
