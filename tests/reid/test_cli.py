import json
import subprocess
import sys

import pytest
import torch

from sharpattn.reid.cli import eval_main, train_main
from sharpattn.reid.config import ConfigError, available_configs, load_config

from conftest import TINY


def _err(capsys):
    return capsys.readouterr().err


def test_unknown_config_key_is_named_with_a_suggestion(capsys):
    assert train_main(["--config", "synthetic/san", "optim.lrr=1e-3"]) == 2
    err = _err(capsys)
    assert "unknown config key 'optim.lrr'" in err and "did you mean 'optim.lr'" in err
    assert "Traceback" not in err
    assert train_main(["--config", "synthetic/san", "modle.blocks=[1]"]) == 2
    assert "unknown config key 'modle'" in _err(capsys)


def test_bad_config_value_and_file(capsys, tmp_path):
    assert train_main(["--config", "synthetic/san", "optim.epochs=many"]) == 2
    assert "'optim.epochs'" in _err(capsys)
    assert train_main(["--config", "synthetic/san", "train.amp=fp8"]) == 2
    assert "train.amp" in _err(capsys)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: market1501/san.yaml\noptim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"base file"):
        load_config(str(bad))
    bad.write_text("optim:\n  learning_rate: 0.1\n")
    assert train_main(["--config", str(bad)]) == 2
    err = _err(capsys)
    assert "unknown config key 'optim.learning_rate'" in err and str(bad) in err
    assert train_main(["--config", "market1501/sann"]) == 2
    assert "market1501/san" in _err(capsys)  # suggested


def test_missing_dataset(capsys, tmp_path):
    # Overrides may sit between options: the error is the dataset's, not argparse's.
    assert train_main(["--config", "market1501/san", "optim.epochs=120", "--data-root", str(tmp_path / "nowhere"),
                       "train.progress=false"]) == 2
    err = _err(capsys)
    assert "unrecognized arguments" not in err
    assert "Market1501 not found" in err and "nowhere" in err and "--data-root" in err
    assert "Traceback" not in err


def test_every_packaged_config_is_valid():
    names = available_configs()
    for ds in ("market1501", "dukemtmcreid", "cuhk03_labeled", "cuhk03_detected"):
        for row in ("baseline", "samg", "samg_cil", "samg_cu", "samg_cil_cu", "san"):
            assert f"{ds}/{row}" in names
    for name in names:
        cfg = load_config(name)
        assert cfg.recipe in ("san", "aaanet"), name
        if cfg.recipe == "san":
            assert cfg.model.arch == "san_resnet50", name
    full = load_config("market1501/san")
    assert (full.optim.lr, full.optim.epochs, full.loss.margin, full.loss.mu) == (2e-4, 150, 0.5, 0.1)
    assert (full.data.num_identities, full.data.num_instances) == (64, 4)
    assert load_config("cuhk03_labeled/samg").model.residual is False


def test_list_configs(capsys):
    assert train_main(["--list-configs"]) == 0
    assert "market1501/san" in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("cli") / "run"
    args = ["--config", "synthetic/san", "--output", str(out)] + TINY + [f"data.root={data_root}", "optim.epochs=1"]
    assert train_main(args) == 0
    return out


def test_train_refuses_to_overwrite_and_resume_checks_the_model(trained_run, capsys):
    assert train_main(["--config", "synthetic/san", "--output", str(trained_run)] + TINY) == 2
    assert "--resume" in _err(capsys)
    # resuming with a different model (from the command line) is refused, naming the difference:
    # as a change of the run, and, with --allow-changes, as a checkpoint of another model
    assert train_main(["--resume", str(trained_run), "model.blocks=[]", "model.context=[]"]) == 2
    err = _err(capsys)
    assert "would change how the run trains" in err and "model.blocks [1] -> []" in err
    assert train_main(["--resume", str(trained_run), "--allow-changes", "model.blocks=[]", "model.context=[]"]) == 2
    err = _err(capsys)
    assert "from another model" in err and "model.blocks [1] vs []" in err
    assert eval_main([str(trained_run), "model.residual=false"]) == 2
    assert "from another model" in _err(capsys)
    assert eval_main([str(trained_run / "nothing.pt")]) == 2
    assert "checkpoint not found" in _err(capsys)


def test_eval_writes_metrics_and_pictures(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert eval_main([str(trained_run / "best.pt"), "--output", str(out), "--rerank", "--ten-crop"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["rerank"] and m["ten_crop"] and 0 <= m["mAP"] <= 1
    for name in ("metrics.md", "ranks.png", "masks.png"):
        assert (out / name).is_file()
    assert "rank-1" in capsys.readouterr().out


def test_resume_finished_run_with_more_epochs(trained_run):
    assert train_main(["--resume", str(trained_run), "optim.epochs=2"]) == 0
    assert torch.load(trained_run / "last.pt", weights_only=True)["epoch"] == 2


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "sharpattn.reid", "--list-configs"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "synthetic/san" in r.stdout


def test_eval_subcommand_help(capsys):
    from sharpattn.reid.cli import main
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0 and "--rerank" in capsys.readouterr().out
