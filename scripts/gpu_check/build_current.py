"""Exit 0, saying what is there, when sharpattn._C is already built for this Python, torch and
GPU architecture and no C++/CUDA source is newer than it; exit 1 saying why not otherwise.

    python scripts/gpu_check/build_current.py --cuda 9.0   # or --cpu

gpu_check.sh skips its build step when this passes (a second part of a run on a warm machine).
"""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def why_not(want_cuda: bool, capability: str) -> tuple[str | None, str]:
    try:
        import sharpattn
        import sharpattn.kernels  # noqa: F401  (an install that lost the Triton kernels is stale)
    except Exception as e:  # noqa: BLE001 - any import failure means: build
        return f"sharpattn does not import: {e}", ""
    info = sharpattn.build_info()
    if not info["compiled"]:
        return f"sharpattn._C did not load: {info['load_error']}", ""
    if info["built_with_torch"] != info["runtime_torch"]:
        return f"built with torch {info['built_with_torch']}, running {info['runtime_torch']}", ""
    arches = (info["cuda_arch_list"] or "").replace("+PTX", "").split(";")
    if want_cuda and not (info["cuda_kernels"] and capability in arches):
        return f"no CUDA kernels for sm_{capability} (arch list {info['cuda_arch_list']!r})", ""
    so = Path(importlib.util.find_spec("sharpattn._C").origin)
    sources = [p for p in (ROOT / "csrc").rglob("*") if p.is_file()] + [ROOT / "setup.py"]
    newer = [p for p in sources if p.stat().st_mtime > so.stat().st_mtime]
    if newer:
        return f"{newer[0].relative_to(ROOT)} is newer than {so.name}", ""
    return None, (f"{so.name} for torch {info['runtime_torch']}, CUDA kernels "
                  f"{info['cuda_kernels']} ({info['cuda_arch_list']})")


if __name__ == "__main__":
    want_cuda = "--cuda" in sys.argv[1:]
    capability = sys.argv[-1] if len(sys.argv) > 2 else ""
    reason, what = why_not(want_cuda, capability)
    print(reason or what)
    sys.exit(1 if reason else 0)
