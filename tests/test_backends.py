"""Backend discovery, forcing and the default choice."""

import pytest
import torch

import sharpattn
from sharpattn import _extension, backends
from sharpattn import functional as F


def test_cpu_kernels_are_built_and_default():
    info = sharpattn.build_info()
    assert info["compiled"] and info["cpu_kernels"], info["problems"]
    assert backends.default("cpu") == "cpu"
    assert "cpu" in backends.available("cpu") and "reference" in backends.available("cpu")


def test_build_record_is_this_interpreters():
    """setup.py records each interpreter's build apart (CI builds two stacks in one tree), so
    build_info names the torch this sharpattn._C was compiled against, not another's."""
    info = sharpattn.build_info()
    assert info["built_with_torch"] is not None, info
    assert _extension._major_minor(info["built_with_torch"]) == \
        _extension._major_minor(torch.__version__), info


def test_report_gives_a_reason_for_every_unavailable_backend():
    report = backends.report()
    for device, entries in report.items():
        assert set(entries) == set(backends.NAMES)
        assert entries["reference"] == "available"
        if device == "cpu":
            assert "CUDA tensors" in entries["cuda"]


def test_use_forces_a_backend_and_restores(monkeypatch):
    calls = []
    real = sharpattn.reference.sharp_attention
    monkeypatch.setattr(sharpattn.reference, "sharp_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    t = torch.rand(1, 1, 2, 2)
    with backends.use("reference"):
        F.sharp_attention(t, tau=1.0, seed=0)
    assert calls == [1]
    F.sharp_attention(t, tau=1.0, seed=0)  # back on the default (cpu): reference not called
    assert calls == [1]


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("SHARPATTN_BACKEND", "reference")
    assert backends.resolve(None, "cpu") == "reference"
    monkeypatch.setenv("SHARPATTN_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="from SHARPATTN_BACKEND"):
        backends.resolve(None, "cpu")
    assert backends.resolve("cpu", "cpu") == "cpu"  # an explicit argument wins


def test_use_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown backend"):
        with backends.use("fastest"):
            pass
