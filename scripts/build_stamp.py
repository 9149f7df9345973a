"""What sharpattn._C was built from: a digest of the sources and settings a build depends on.

scripts/install.sh keeps the digest of the last build in .venv and skips the build (minutes of
compiling) when nothing it depends on changed. Prints the digest, or with --explain OLD the
first reason it differs from OLD.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: files whose content the build reads (the extension's sources, the build and package metadata)
SOURCES = ("csrc", "setup.py", "pyproject.toml", "sharpattn/_build_config.py")
#: environment switches of setup.py and torch's BuildExtension
SETTINGS = ("SHARPATTN_FORCE_CPU", "SHARPATTN_FORCE_CUDA", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME")


def build_inputs(root: Path = ROOT) -> dict:
    """``{"files": {path: sha256}, "settings": {...}, "torch": version, "python": version}``."""
    files = {}
    for entry in SOURCES:
        path = root / entry
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in paths:
            if p.exists():
                files[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {"files": files, "settings": {k: os.environ.get(k) for k in SETTINGS},
            "torch": torch_version, "python": sys.version.split()[0]}


def difference(old: dict, new: dict) -> str | None:
    """The first reason ``new`` needs a build that ``old`` did not, in words; None if none."""
    for key, what in (("torch", "torch"), ("python", "Python")):
        if old.get(key) != new[key]:
            return f"{what} changed ({old.get(key)} -> {new[key]})"
    for key, value in new["settings"].items():
        if old.get("settings", {}).get(key) != value:
            return f"{key} changed ({old.get('settings', {}).get(key)!r} -> {value!r})"
    changed = sorted(set(old.get("files", {}).items()) ^ set(new["files"].items()))
    if changed:
        return f"{changed[0][0]} changed" + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
    return None


def main(argv: list[str]) -> int:
    new = build_inputs()
    if len(argv) == 2 and argv[0] == "--explain":
        old_path = Path(argv[1])
        if not old_path.is_file():
            print("no earlier build recorded")
            return 1
        reason = difference(json.loads(old_path.read_text()), new)
        print(reason or "up to date")
        return 1 if reason else 0
    print(json.dumps(new, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
