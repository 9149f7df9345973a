"""scripts/build_stamp.py: install.sh rebuilds sharpattn._C exactly when a build input changed."""

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_stamp", ROOT / "scripts" / "build_stamp.py")
build_stamp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_stamp)


@pytest.fixture
def tree(tmp_path):
    for entry in build_stamp.SOURCES:
        src = ROOT / entry
        if src.is_dir():
            shutil.copytree(src, tmp_path / entry)
        else:
            (tmp_path / entry).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, tmp_path / entry)
    return tmp_path


def test_nothing_changed_means_no_build(tree):
    assert build_stamp.difference(build_stamp.build_inputs(tree), build_stamp.build_inputs(tree)) is None


def test_a_changed_kernel_source_is_named(tree):
    old = build_stamp.build_inputs(tree)
    source = next(p for p in sorted((tree / "csrc").rglob("*.cpp")))
    source.write_text(source.read_text() + "\n// changed\n")
    reason = build_stamp.difference(old, build_stamp.build_inputs(tree))
    assert reason is not None and str(source.relative_to(tree)) in reason


def test_a_new_source_file_and_a_changed_setting_need_a_build(tree, monkeypatch):
    old = build_stamp.build_inputs(tree)
    (tree / "csrc" / "cpu" / "new_kernel.cpp").write_text("// new\n")
    assert "new_kernel.cpp" in build_stamp.difference(old, build_stamp.build_inputs(tree))
    old = build_stamp.build_inputs(tree)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    assert "TORCH_CUDA_ARCH_LIST" in build_stamp.difference(old, build_stamp.build_inputs(tree))


def test_a_changed_torch_needs_a_build(tree):
    old = build_stamp.build_inputs(tree)
    new = dict(old, torch="0.0.0")
    assert build_stamp.difference(old, new).startswith("torch changed")
