"""The benchmark tooling itself: the minimum-traffic formulas against hand-counted bytes, the
report script on a small synthetic pytest-benchmark JSON file (its table must show the figures
computed here by hand), and the torch.compile baseline's formula against the reference."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report, traffic  # noqa: E402

N, C, H, W = 8, 256, 64, 32        # block 1 at batch 8
E = N * C * H * W                  # 4,194,304 elements


@pytest.mark.parametrize("op, kwargs, pass_, dtype, expected", [
    # read T, write F
    ("sharp_attention", {}, "fwd", "float32", 2 * E * 4),
    # + grad_F, T, grad_T; TV: write and read N float32 values
    ("sharp_attention", {"tv": True}, "fwdbwd", "float32", 5 * E * 4 + 2 * N * 4),
    # separate X: read T, X, write F; backward reads grad_F, T, X, writes grad_T, grad_X
    ("sharp_attention", {"separate_x": True}, "fwd", "bfloat16", 3 * E * 2),
    ("sharp_attention", {"separate_x": True, "tv": True}, "fwdbwd", "bfloat16",
     8 * E * 2 + 2 * N * 4),
    ("tv_loss", {}, "fwd", "float32", E * 4 + N * 4),
    ("tv_loss", {}, "fwdbwd", "bfloat16", 3 * E * 2 + 2 * N * 4),
    ("tv_loss", {}, "fwdbwd", "float64", 3 * E * 8 + 2 * N * 8),
    # 16 copies written, then read back as their gradient
    ("grid_occlusion", {}, "fwd", "bfloat16", 17 * E * 2),
    ("grid_occlusion", {}, "fwdbwd", "float32", 34 * E * 4),
    ("grid_occlusion_pool", {}, "fwd", "float32", E * 4 + N * 16 * C * 4),
    ("grid_occlusion_pool", {"grid": (2, 3)}, "fwdbwd", "float32", 2 * E * 4 + 2 * N * 6 * C * 4),
])
def test_traffic_formulas(op, kwargs, pass_, dtype, expected):
    assert traffic.min_traffic(op, (N, C, H, W), dtype, pass_, **kwargs) == expected


def test_traffic_rejects_unknown():
    with pytest.raises(ValueError):
        traffic.min_traffic("softmax", (N, C, H, W), "float32", "fwd")
    with pytest.raises(ValueError):
        traffic.min_traffic("tv_loss", (N, C, H, W), "float32", "bwd")
    assert traffic.copy_traffic(1000) == 2000
    assert traffic.element_bytes("torch.bfloat16") == 2


def _bench(impl, median, *, peak, op="sharp_attention", variant="x_is_t,tv", pass_="fwdbwd",
           device="cpu", copy_gbps=10.0, dtype="float32"):
    nbytes = traffic.min_traffic(op, (N, C, H, W), dtype, pass_, tv=variant.endswith("tv"))
    return {
        "name": f"test_{op}[{impl}]", "fullname": f"bench_ops.py::test_{op}[{impl}]",
        "stats": {"median": median, "iqr": 0.0, "rounds": 5, "min": median, "max": median,
                  "mean": median},
        "extra_info": {"suite": "ops", "op": op, "variant": variant, "block": 1,
                       "shape": [N, C, H, W], "dtype": dtype, "layout": "contiguous",
                       "pass": pass_, "impl": impl, "traffic_bytes": nbytes, "device": device,
                       "device_name": f"Test {device.upper()}",
                       "device_slug": f"{device}-test", "copy_gbps": copy_gbps,
                       "peak_mem_bytes": peak, "versions": {"torch": "x"}, "threads": 2,
                       "loadavg_before": [1.0, 1.0, 1.0]},
    }


def _write(tmp_path, benchmarks, name="cpu-test-ops.json", failures=()):
    data = {"datetime": "2025-01-01T00:00:00", "machine_info": {}, "benchmarks": benchmarks,
            "sharpattn_failures": list(failures)}
    (tmp_path / name).write_text(json.dumps(data))


def _table_row(text, *cells):
    """The markdown table rows containing all the given cells."""
    return [line for line in text.splitlines()
            if line.startswith("|") and all(f" {c} |" in line for c in cells)]


def test_report_table_and_targets(tmp_path, capsys):
    _write(tmp_path, [_bench("reference", 0.300, peak=1000), _bench("compile", 0.100, peak=400),
                      _bench("cpu", 0.050, peak=100)],
           failures=[{"test": "t[compile]", "kind": "error", "reason": "boom"}])
    assert report.main(["--results", str(tmp_path), "--no-plots"]) == 0
    text = (tmp_path / "README.md").read_text()

    nbytes = 5 * E * 4 + 2 * N * 4
    gbps = nbytes / 0.050 / 1e9                                    # 1.68 GB/s
    assert f"{gbps:.3g}" == "1.68"
    rows = _table_row(text, "sharp_attention", "x_is_t,tv", "fwdbwd", "cpu")
    assert len(rows) == 1, text
    row = rows[0]
    for cell in ("8x256x64x32", "50", "1.68", "16.8 %", "6.00x", "2.00x", "100 B", "0.1"):
        assert f" {cell} |" in row, (cell, row)
    eager_row = _table_row(text, "sharp_attention", "x_is_t,tv", "reference", "300")
    assert eager_row and " 1.00x |" in eager_row[0] and " 0.28 |" in eager_row[0]

    # headline table and the CPU target: cpu is 6x eager
    assert "### Headline" in text
    assert "MET      CPU kernels >= 3x eager" in text and ": 6 (target >= 3)" in text
    assert "failed: `t[compile]`" in text and "boom" in text
    assert "MET      CPU kernels >= 3x eager" in capsys.readouterr().out


def test_report_target_not_met_and_gpu_checks(tmp_path):
    # a GPU run where the kernel is 2x eager, 1.2x compile, at 50 % of the copy bandwidth
    nbytes = traffic.min_traffic("sharp_attention", (N, C, H, W), "bfloat16", "fwdbwd", tv=True)
    copy = nbytes / 0.010 / 1e9 / 0.5
    benches = [_bench(i, t, peak=p, device="cuda", copy_gbps=copy, dtype="bfloat16")
               for i, t, p in (("reference", 0.040, 900), ("compile", 0.024, 600),
                               ("cuda", 0.020, 200))]
    _write(tmp_path, benches, name="cuda-test-ops.json")
    rows, _ = report.load(sorted(tmp_path.glob("*.json")))
    checks = {c["target"].split(" [")[0]: c for c in report.targets(rows)}
    assert checks["GPU >= 5x eager"]["met"] is False
    assert checks["GPU >= 5x eager"]["value"] == pytest.approx(2.0)
    assert checks["GPU >= 1.5x torch.compile"]["met"] is False
    assert checks["GPU copy-BW fraction >= 85%"]["value"] == pytest.approx(0.25)
    assert checks["GPU peak memory <= 1/3 of eager"]["met"] is True  # 200 / 900


def test_report_plots(tmp_path):
    pytest.importorskip("matplotlib")
    _write(tmp_path, [_bench("reference", 0.3, peak=1), _bench("cpu", 0.05, peak=1)])
    assert report.main(["--results", str(tmp_path)]) == 0
    for name in ("cpu-test-time.png", "cpu-test-bandwidth.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in (tmp_path / "README.md").read_text()


def test_compile_baseline_formula_matches_reference():
    """The formula torch.compile is benchmarked on (noise as an input) is the reference's."""
    from benchmarks import common
    from sharpattn import reference

    t = torch.randn(2, 3, 5, 7).relu()
    x = torch.randn(2, 3, 5, 7)
    for mask_input in (None, x):
        noise = reference.logistic_noise(t.shape, seed=9, offset=4)
        out, tv = common.reference_given_noise(t, mask_input, noise, tau=0.7, return_tv=True)
        want, _, want_tv = reference.sharp_attention(t, mask_input, tau=0.7, seed=9, offset=4,
                                                     return_tv=True)
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(tv, want_tv)
