"""The command line, in process: fit -> validate -> test -> export -> from_pretrained, and the zoo verbs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import zoo
from zoo.cli import expand_short_names, main
from zoo.errors import CheckpointFormatError, UnknownModelError

CONFIG = str(Path(__file__).parent / "data" / "tinytest.yaml")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny `zoo fit` run shared by the CLI tests (validation every 15 steps, last.ckpt kept)."""
    root = tmp_path_factory.mktemp("run")
    assert main(["fit", "-c", CONFIG, f"--trainer.default_root_dir={root}", "--trainer.max_steps=34"]) == 0
    ckpt = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return root, ckpt


def test_fit_validate_test_export_and_load(trained_run, tmp_path, capsys):
    root, ckpt = trained_run
    assert main(["validate", "-c", CONFIG, f"--ckpt_path={ckpt}"]) == 0
    assert main(["test", "-c", CONFIG, f"--ckpt_path={ckpt}"]) == 0
    results = json.loads((ckpt.parent.parent / "results.json").read_text())
    assert set(results) == {"validation", "test"}
    assert 0 <= results["validation"]["metrics"]["accuracy"] <= 1
    assert results["test"]["dataset"]["rows"]["test"] > 0

    claim = tmp_path / "claim.json"
    claim.write_text(json.dumps({"claim": "A beats B", "setup": "3 seeds", "columns": ["arm", "score"],
                                 "rows": [["A", "0.9 ± 0.1"], ["B", "0.5 ± 0.1"]], "verdict": "A wins here",
                                 "figure": "grid.png"}))
    (tmp_path / "grid.png").write_bytes(b"\x89PNG\r\n\x1a\n fake pixels")
    out = tmp_path / "tiny-export"
    assert main(["export", str(ckpt), str(out), "--claim", str(claim), "--repo-id", "me/tiny"]) == 0
    assert "hub folder written to" in capsys.readouterr().out

    model = zoo.from_pretrained(out)
    from zoo.cli import load_checkpoint, module_from_checkpoint

    reference = module_from_checkpoint(load_checkpoint(ckpt), str(ckpt))
    batch = reference.example_batch(4)
    assert torch.equal(model(batch), reference(batch))
    assert model.tokenizer is not None and len(model.tokenizer) == len(reference.tokenizer)

    card = ModelCard.load(out / "README.md")
    measured = {m["type"]: m["value"] for r in card.data.to_dict()["model-index"][0]["results"]
                for m in r["metrics"]}
    assert measured["accuracy"] == pytest.approx(results["validation"]["metrics"]["accuracy"], abs=1e-4) or \
        measured["accuracy"] == pytest.approx(results["test"]["metrics"]["accuracy"], abs=1e-4)
    text = card.text
    assert "zoo fit -c" in text and "tinytest.yaml" in text and "--trainer.max_steps=34" in text
    assert f"| optimizer steps | {torch.load(ckpt, weights_only=True)['global_step']} " in text
    assert "A wins here" in text and 'zoo.from_pretrained("me/tiny")' in text
    assert "](grid.png)" in text and (out / "grid.png").read_bytes() == (tmp_path / "grid.png").read_bytes()
    assert "grid.png" in json.loads((out / "config.json").read_text())["files"]
    assert "max_steps: 34" in text  # the resolved config is in the card


def test_export_refuses_a_broken_checkpoint(tmp_path, capsys):
    from zoo.cli import load_checkpoint

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="not a readable Lightning checkpoint"):
        load_checkpoint(bad)
    assert main(["export", str(bad), str(tmp_path / "out")]) == 2
    assert "not a readable Lightning checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_short_names_resolve_to_registered_classes():
    expanded = expand_short_names(["--model=tinytest-tiny", "--data", "tinytest_names", "--trainer.max_steps=1"])
    model = json.loads(expanded[0].split("=", 1)[1])
    assert model == {"class_path": "tiny_family.TinyClassifier", "init_args": {"hidden": 16}}
    assert expanded[1:] == ["--data=tiny_family.TinyData", "--trainer.max_steps=1"]
    with pytest.raises(UnknownModelError, match="Did you mean 'tinytest-tiny'"):
        expand_short_names(["--model=tinytest-tinyy"])


def test_print_config_with_short_names(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--model=tinytest-tiny", "--data=tinytest_names", "--print_config"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: tiny_family.TinyClassifier" in printed and "hidden: 16" in printed
    assert "class_path: tiny_family.TinyData" in printed


def test_list_and_info(capsys):
    assert main(["list", "tinytest*"]) == 0
    assert "tinytest-tiny" in capsys.readouterr().out
    assert main(["list", "nothing-matches-*"]) == 1
    assert main(["info", "tinytest"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "tinytest-tiny" and info["paper"]["arxiv"] == "0000.00000"
    assert main(["info", "tinytest-tinny"]) == 2  # a ZooError becomes a one-line message, exit code 2
    assert "Did you mean 'tinytest-tiny'" in capsys.readouterr().err


def test_load_config_builds_the_same_objects():
    run = zoo.load_config(CONFIG, ["--trainer.max_steps=3", "--model.init_args.hidden=8"])
    assert run.model.init_args["hidden"] == 8 and run.model.optim.schedule == "cosine"
    assert run.trainer.max_steps == 3 and run.datamodule.batch_size == 16
    run.trainer.fit(run.model, run.datamodule)
    assert run.trainer.global_step == 3


def test_sweep_runs_every_combination(tmp_path, capsys):
    assert main(["sweep", "-c", CONFIG, "-m", "model.init_args.hidden=4,8", "model.init_args.optim.lr=0.01,0.1",
                 "--out", str(tmp_path), "--dry-run"]) == 0
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert sorted(tuple(j["overrides"]) for j in summary) == sorted(
        [(f"model.init_args.hidden={h}", f"model.init_args.optim.lr={lr}") for h in (4, 8) for lr in (0.01, 0.1)])
    real = tmp_path / "real"
    assert main(["sweep", "-c", CONFIG, "-m", "model.init_args.hidden=4,8", "--out", str(real),
                 "--trainer.max_steps=2", "--trainer.enable_checkpointing=false", "--trainer.logger=false",
                 "--trainer.callbacks=[]"]) == 0
    runs = json.loads(next(real.glob("*/summary.json")).read_text())
    assert [r["overrides"] for r in runs] == [["model.init_args.hidden=4"], ["model.init_args.hidden=8"]]
    assert all("train/loss_step" in r["metrics"] or "train/loss" in r["metrics"] for r in runs), runs


def test_push_command_publishes_a_hub_folder(hub, trained_run, tmp_path, capsys):
    _, ckpt = trained_run
    out = tmp_path / "export"
    assert main(["export", str(ckpt), str(out)]) == 0
    repo_id = hub.repo_id("cli-pushed")
    assert main(["push", str(out), repo_id, "--private"]) == 0
    assert f"pushed {out} to {repo_id}" in capsys.readouterr().out
    assert hub.api.model_info(repo_id).private
    local, remote = zoo.from_pretrained(out), zoo.from_pretrained(repo_id)
    batch = local.example_batch(3)
    assert torch.equal(local(batch), remote(batch))
    assert main(["push", str(tmp_path), repo_id]) == 2  # not a hub folder: refused before anything is sent
    assert "not a zoo hub folder" in capsys.readouterr().err


def test_validate_with_ckpt_path_tokenizes_with_the_checkpoint_tokenizer(trained_run):
    """Lightning restores --ckpt_path after setup: the data must wait for it instead of training a new tokenizer."""
    from zoo.cli import load_checkpoint, module_from_checkpoint, run_cli

    _, ckpt = trained_run
    trained_vocab = len(module_from_checkpoint(load_checkpoint(ckpt), str(ckpt)).tokenizer)
    cli = run_cli(["validate", "-c", CONFIG, f"--ckpt_path={ckpt}", "--data.init_args.vocab_size=12"])
    assert cli.datamodule.tokenizer is cli.model.tokenizer
    assert len(cli.model.tokenizer) == trained_vocab != 12
