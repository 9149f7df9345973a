"""Learned metrics in use: ``sharpattn-eval --metric``, ``eval.metrics`` in training, the
training-feature cache and the saved metrics."""

import json

import pytest
import torch

from sharpattn.reid import metric_from_state_dict
from sharpattn.reid.cli import eval_main, train_main
from sharpattn.reid.config import ConfigError
from sharpattn.reid.engine import train
from sharpattn.reid.evaluation.metric_eval import resolve_metric_names

from conftest import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("metric_eval") / "run"
    assert train_main(["--output", str(out), "--config", "synthetic/san"] + TINY
                      + [f"data.root={data_root}", "optim.epochs=1"]) == 0
    return out


def test_eval_metric_all_gives_one_row_per_metric_and_caches_training_features(run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert eval_main([str(run / "best.pt"), "--metric", "all", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("euclidean", "xqda", "kissme"):
        assert f"tiny ({name})" in printed
        assert (out / f"metric_{name}.pt").is_file() or name == "euclidean"
    m = json.loads((out / "metrics.json").read_text())
    rows = m["by_metric"]
    assert list(rows) == ["euclidean", "xqda", "kissme"]
    assert rows["euclidean"]["mAP"] == m["mAP"]  # the plain evaluation is the Euclidean row
    assert rows["xqda"]["fit_info"]["dims_kept"] >= 1 and rows["kissme"]["fit_info"]["pca_dim"] == 16
    assert all(0 <= r["mAP"] <= 1 for r in rows.values())
    assert "tiny (kissme)" in (out / "metrics.md").read_text()
    cached = list((run / "eval_cache").glob("train-*.pt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns

    # A second evaluation of the same checkpoint reads the cached training features, and the
    # saved metric reproduces the fitted one.
    out2 = tmp_path / "eval2"
    assert eval_main([str(run / "best.pt"), "--metric", "xqda", "--rerank", "--output", str(out2)]) == 0
    assert "from the cache" in capsys.readouterr().out
    assert cached[0].stat().st_mtime_ns == stamp
    again = json.loads((out2 / "metrics.json").read_text())["by_metric"]
    assert list(again) == ["xqda"] and again["xqda"]["rerank"]
    a = metric_from_state_dict(torch.load(out / "metric_xqda.pt", weights_only=True))
    b = metric_from_state_dict(torch.load(out2 / "metric_xqda.pt", weights_only=True))
    q = torch.randn(3, 16)
    assert torch.equal(a.distance(q, q), b.distance(q, q))

    # other weights in the same run folder never read that cache: they get their own entry
    ck = torch.load(run / "best.pt", weights_only=True)
    ck["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, run / "other.pt")
    assert eval_main([str(run / "other.pt"), "--metric", "kissme", "--output", str(tmp_path / "eval3")]) == 0
    assert "from the cache" not in capsys.readouterr().out
    assert len(list((run / "eval_cache").glob("train-*.pt"))) == 2


def test_bad_metric_names_are_refused(run, capsys):
    assert eval_main([str(run / "best.pt"), "--metric", "mahalanobis"]) == 2
    assert "unknown metric 'mahalanobis'" in capsys.readouterr().err
    assert resolve_metric_names("all") == ["euclidean", "xqda", "kissme"]
    assert resolve_metric_names("kissme, xqda,kissme") == ["kissme", "xqda"]
    with pytest.raises(ConfigError, match="eval.metrics"):
        from sharpattn.reid.config import load_config
        load_config(None, ["eval.metrics=[euclidean,lmnn]"])


def test_training_reports_every_metric_of_eval_metrics(tiny_config, tmp_path):
    cfg = tiny_config("optim.epochs=1", "eval.metrics=[euclidean,xqda,kissme]")
    summary = train(cfg, tmp_path / "r")
    rows = summary["metrics"]["by_metric"]
    assert list(rows) == ["euclidean", "xqda", "kissme"]
    assert rows["euclidean"]["mAP"] == summary["metrics"]["mAP"]
    for name in ("xqda", "kissme"):
        assert (tmp_path / "r" / f"metric_{name}.pt").is_file()
        assert rows[name]["fit_seconds"] > 0
    assert "tiny (xqda)" in (tmp_path / "r" / "report.md").read_text()
    # the default evaluates with the Euclidean distance only
    plain = train(tiny_config("optim.epochs=1"), tmp_path / "p")
    assert "by_metric" not in plain["metrics"]
