"""ZooModule and ZooDataModule behaviour: init-arg capture, optimisation, data sources and splits."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from tiny_family import TinyClassifier, TinyData

from zoo.core.module import OptimConfig, ZooModule, lr_lambda
from zoo.errors import ConfigError, OfflineError


def test_init_args_are_captured_typed_and_json():
    model = TinyClassifier(hidden=8, optim=OptimConfig(lr=0.05, warmup=3))
    assert model.init_args == {"vocab_size": 64, "hidden": 8, "num_labels": 2,
                               "optim": {"lr": 0.05, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8,
                                         "warmup": 3, "schedule": "linear", "min_lr_ratio": 0.0}}
    assert dict(model.hparams) == model.init_args
    json.dumps(model.init_args)
    # a dict from a config file builds the same optimiser settings
    assert TinyClassifier(optim=model.init_args["optim"]).optim == model.optim


def test_untyped_init_argument_is_refused_at_class_definition():
    with pytest.raises(TypeError, match="must annotate every argument; untyped: \\['width'\\]"):
        class Untyped(ZooModule):  # noqa: F841
            def __init__(self, width=3):
                super().__init__()


def test_module_passed_through_init_is_refused_with_the_argument_named():
    class Holder(ZooModule):
        def __init__(self, layer: object = None):
            super().__init__()

    with pytest.raises(ConfigError, match="init argument layer is a Linear.*never an nn.Module"):
        Holder(layer=torch.nn.Linear(2, 2))


def test_unknown_optimizer_setting_is_named():
    with pytest.raises(ConfigError, match="unknown optimizer setting.*'lrr'"):
        TinyClassifier(optim={"lrr": 1e-3})


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedule_warms_up_then_decays(schedule):
    factor = lr_lambda(OptimConfig(warmup=0.1, schedule=schedule, min_lr_ratio=0.1), total_steps=100)
    values = [factor(s) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(values[:10], values[1:10]))  # rising during warm-up
    if schedule == "constant":
        assert values[-1] == 1.0
    else:
        assert all(a >= b - 1e-12 for a, b in zip(values[10:], values[11:]))  # then never rising
        assert values[-1] == pytest.approx(0.1, abs=0.02)


def test_weight_decay_skips_biases_and_norms():
    model = TinyClassifier(optim=OptimConfig(weight_decay=0.1))
    trainer = pl.Trainer(max_steps=10, logger=False, enable_checkpointing=False)
    model.trainer = trainer
    optimizer = model.configure_optimizers()["optimizer"]
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])


def test_embedded_splits_are_deterministic_and_leak_free():
    first, second = TinyData(seed=0), TinyData(seed=0)
    a, b = first.load_source(), second.load_source()
    groups = {name: set(split["group"]) for name, split in a.items()}
    assert groups["train"] and groups["validation"] and groups["test"]
    assert not (groups["train"] & groups["validation"]) and not (groups["train"] & groups["test"])
    assert not (groups["validation"] & groups["test"])
    assert all(a[k]["group"] == b[k]["group"] for k in a)
    other = TinyData(seed=1).load_source()
    assert set(other["test"]["group"]) != groups["test"]


def test_training_reduces_loss_and_hands_the_tokenizer_over():
    pl.seed_everything(0)
    model, data = TinyClassifier(optim=OptimConfig(lr=0.05)), TinyData(batch_size=32)
    trainer = pl.Trainer(max_steps=60, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    model.eval()
    before = torch.nn.functional.cross_entropy(model(batch), batch["labels"]).item()
    trainer.fit(model, data)
    model.eval()
    after = torch.nn.functional.cross_entropy(model(batch), batch["labels"]).item()
    assert model.tokenizer is data.tokenizer
    assert after < before * 0.8
    record = model.run_record()
    assert record["global_step"] == 60 and record["wall_time_s"] > 0 and record["data"]["rows"]["train"] > 200


def test_tokenized_splits_are_cached_on_disk(tmp_path):
    first = TinyData()
    first.cache_dir = tmp_path
    first.setup("fit")
    files = sorted((tmp_path / "tokenized").glob("*.arrow"))
    assert len(files) == 3
    second = TinyData()
    second.cache_dir = tmp_path
    second.setup("fit")
    assert sorted((tmp_path / "tokenized").glob("*.arrow")) == files
    assert second.splits["train"].cache_files[0]["filename"] in {str(f) for f in files}


def test_changed_tokenize_version_rebuilds_the_cache(tmp_path, monkeypatch):
    first = TinyData()
    first.cache_dir = tmp_path
    first.setup("fit")
    old = set((tmp_path / "tokenized").glob("*.arrow"))
    monkeypatch.setattr(TinyData, "tokenize_version", TinyData.tokenize_version + 1)  # tokenize() output changed
    second = TinyData()
    second.cache_dir = tmp_path
    second.setup("fit")
    new = set((tmp_path / "tokenized").glob("*.arrow")) - old
    assert len(new) == 3  # same class, rows and tokenizer: only the version tells the stale cache apart


def write_split_files(folder, rows_by_split, ext="csv"):
    folder.mkdir()
    for split, rows in rows_by_split.items():
        with open(folder / f"{split}.{ext}", "w") as handle:
            if ext == "csv":
                handle.write("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
            else:
                handle.write("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows))


def test_local_folder_with_train_dev_test_files(tmp_path):
    rows = {"train": [("a b", 0), ("c d", 1)] * 5, "dev": [("a c", 0)] * 3, "test": [("b d", 1)] * 2}
    write_split_files(tmp_path / "data", rows)
    data = TinyData(source=str(tmp_path / "data"))
    data.setup("fit")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 10, "validation": 3, "test": 2}
    batch = next(iter(data.val_dataloader()))
    assert batch["input_ids"].shape[0] == 3 and batch["labels"].tolist() == [0, 0, 0]


def test_single_local_file_is_split_by_group(tmp_path):
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps({"text": f"w{i % 40}", "label": i % 2, "group": f"g{i % 40}"}) + "\n"
                            for i in range(400)))
    splits = TinyData(source=str(path)).load_source()
    assert sum(len(s) for s in splits.values()) == 400
    assert not set(splits["train"]["group"]) & set(splits["test"]["group"])


def test_bad_sources_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="looks like a local path but does not exist"):
        TinyData(source="./no/such/folder").load_source()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.csv").write_text("sentence,y\nx,1\n")
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['text', 'label'\]"):
        TinyData(source=str(tmp_path / "bad")).load_source()
    with pytest.raises(ConfigError, match="must be in \\[0, 1\\)"):
        TinyData.__mro__[1](val_fraction=0.6, test_fraction=0.5)


def test_hugging_face_dataset_id_loads_through_the_hub(hub, tmp_path):
    """`source="org/name"` goes through `datasets.load_dataset`, here against the loopback Hub."""
    repo = hub.repo_id("module-names")
    hub.api.create_repo(repo, repo_type="dataset")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n" + "".join(f"w{i} x,{i % 2}\n" for i in range(30)))
    (folder / "test.csv").write_text("text,label\n" + "".join(f"t{i} y,{i % 2}\n" for i in range(6)))
    hub.api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=str(folder))
    data = TinyData(source=repo)
    data.cache_dir = tmp_path / "cache"
    data.setup("fit")
    assert len(data.splits["test"]) == 6 and len(data.splits["train"]) + len(data.splits["validation"]) == 30
    # datasets also probes a legacy script bucket and the datasets-server; both are optional, the guard refused them
    assert all("s3.amazonaws.com" in r or "datasets-server." in r for r in hub.blocked_requests), hub.blocked_requests
    hub.blocked_requests.clear()


def test_unknown_dataset_id_offline_names_the_fix(hub):
    with hub.offline(assert_no_requests=False):
        with pytest.raises(OfflineError, match="neither cached nor reachable.*connect once to cache it, or pass "
                                               "source='embedded' or a local folder"):
            TinyData(source=hub.repo_id("no-such-dataset")).load_source()
    hub.blocked_requests.clear()
