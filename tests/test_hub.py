"""The hub folder format: round trips, the meta-device build, integrity checks and error paths."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

import zoo
from zoo.core.module import OptimConfig, ZooModule
from zoo.errors import (
    CheckpointFormatError,
    ConfigError,
    FormatVersionError,
    IntegrityError,
    KeyMismatchError,
    UnknownModelError,
    UnregisteredClassError,
)
from zoo.hub.pretrained import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME, sha256_file
from zoo.registry import ModelEntry, Paper, register

CONSTRUCTED_ON: list[str] = []


class TinyT5(ZooModule):
    """A tied-embedding transformers backbone and a buffer: what the meta-device build must handle."""

    family = "tinytest-t5"

    def __init__(self, d_model: int = 16, optim: OptimConfig | None = None):
        super().__init__(optim=optim)
        config = T5Config(vocab_size=40, d_model=d_model, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                          d_kv=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=True)
        self.t5 = T5ForConditionalGeneration(config)
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)
        CONSTRUCTED_ON.append(self.t5.shared.weight.device.type)

    def forward(self, batch):
        return self.t5(input_ids=batch["input_ids"], labels=batch["input_ids"]).logits * self.scale

    def example_batch(self, batch_size: int = 2):
        return {"input_ids": torch.randint(2, 40, (batch_size, 7), generator=torch.Generator().manual_seed(0))}


register(ModelEntry(name="tinytest-t5", family="tinytest-t5", variant="tiny", module_class=TinyT5, config={},
                    paper=Paper("Tiny T5", "0000.00001", "@misc{t}"), license="apache-2.0"))


def rewrite_config(folder, **changes):
    config = json.loads((folder / CONFIG_NAME).read_text())
    config.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def test_round_trip_gives_identical_outputs_and_tokenizer(tmp_path, tiny_model):
    batch = tiny_model.example_batch(4)
    folder = zoo.save_pretrained(tiny_model, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "tokenizer"]
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["format_version"] == FORMAT_VERSION and config["family"] == "tinytest"
    assert config["class"] == "tiny_family.TinyClassifier" and config["init_args"]["hidden"] == 16
    assert set(config["files"]) == {"README.md", "model.safetensors", "tokenizer/tokenizer.json",
                                    "tokenizer/tokenizer_config.json"}
    loaded = zoo.from_pretrained(folder)
    assert not loaded.training
    assert torch.equal(loaded(batch), tiny_model(batch))
    text = "_ t h r e a d"
    assert loaded.tokenizer(text)["input_ids"] == tiny_model.tokenizer(text)["input_ids"]


def test_tied_weights_are_stored_once_and_retied_on_load(tmp_path):
    CONSTRUCTED_ON.clear()
    model = TinyT5().eval()
    batch = model.example_batch()
    folder = zoo.save_pretrained(model, tmp_path / "t5")
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS_NAME), "pt") as handle:
        keys = set(handle.keys())
    assert "t5.shared.weight" in keys and "t5.lm_head.weight" not in keys
    loaded = zoo.from_pretrained(folder)
    assert CONSTRUCTED_ON == ["cpu", "meta"]  # the load built parameters on meta: no second initialisation
    assert loaded.t5.lm_head.weight is loaded.t5.shared.weight
    assert loaded.t5.encoder.embed_tokens.weight is loaded.t5.shared.weight
    assert loaded.scale.item() == 2.0
    assert torch.equal(loaded(batch), model(batch))


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantized_load_keeps_outputs_close(tmp_path, mode):
    model = TinyT5().eval()
    batch = model.example_batch()
    folder = zoo.save_pretrained(model, tmp_path / "t5")
    quantized = zoo.from_pretrained(folder, quantize=mode)
    import bitsandbytes as bnb

    layer = quantized.t5.encoder.block[0].layer[0].SelfAttention.q
    assert isinstance(layer, bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit)
    reference, got = model(batch), quantized(batch)
    assert torch.isfinite(got).all()
    relative = (got - reference).norm() / reference.norm()
    assert relative < (0.1 if mode == "int8" else 0.3)
    with pytest.raises(ConfigError, match="quantize='int4' is not supported"):
        zoo.from_pretrained(folder, quantize="int4")


def test_truncated_weights_fail_the_hash_check(tmp_path, tiny_model):
    folder = zoo.save_pretrained(tiny_model, tmp_path / "m")
    weights = folder / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(IntegrityError, match="model.safetensors does not match its sha256.*download again"):
        zoo.from_pretrained(folder)


def test_truncated_weights_with_a_matching_hash_are_named_corrupt(tmp_path, tiny_model):
    folder = zoo.save_pretrained(tiny_model, tmp_path / "m")
    weights = folder / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:60])
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["files"][WEIGHTS_NAME] = sha256_file(weights)
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointFormatError, match="not a readable safetensors file.*truncated or corrupt"):
        zoo.from_pretrained(folder)


def test_missing_listed_file_is_named(tmp_path, tiny_model):
    folder = zoo.save_pretrained(tiny_model, tmp_path / "m")
    (folder / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match="tokenizer.json is listed in config.json but missing"):
        zoo.from_pretrained(folder)


def test_unregistered_class_is_never_imported(tmp_path, tiny_model):
    folder = zoo.save_pretrained(tiny_model, tmp_path / "m")
    rewrite_config(folder, **{"class": "os.system"})
    with pytest.raises(UnregisteredClassError, match="'os.system', which is not a registered zoo class"):
        zoo.from_pretrained(folder)


def test_newer_format_version_asks_for_an_upgrade(tmp_path, tiny_model):
    folder = zoo.save_pretrained(tiny_model, tmp_path / "m")
    rewrite_config(folder, format_version=FORMAT_VERSION + 1, zoo_version="9.0")
    with pytest.raises(FormatVersionError, match="written by zoo 9.0.*Upgrade zoo"):
        zoo.from_pretrained(folder)


def test_malformed_config_is_named(tmp_path, tiny_model):
    folder = zoo.save_pretrained(tiny_model, tmp_path / "m")
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointFormatError, match="config.json is not valid JSON"):
        zoo.from_pretrained(folder)
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointFormatError, match="not a zoo hub folder: config.json is missing"):
        zoo.from_pretrained(folder)


def test_shape_mismatch_names_each_key(tmp_path, tiny_model):
    folder = zoo.save_pretrained(tiny_model, tmp_path / "m")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["init_args"]["hidden"] = 8
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(KeyMismatchError) as info:
        zoo.from_pretrained(folder)
    message = str(info.value)
    assert "shape mismatch: embed.weight: checkpoint (64, 16) vs model (64, 8)" in message
    assert {m.split(":")[0] for m in info.value.mismatched} == {"embed.weight", "proj.weight", "proj.bias",
                                                                "head.weight"}


def test_missing_and_unexpected_keys_strict_and_lenient(tmp_path, tiny_model):
    from safetensors.torch import load_file, save_file

    folder = zoo.save_pretrained(tiny_model, tmp_path / "m")
    tensors = load_file(str(folder / WEIGHTS_NAME))
    tensors["extra.weight"] = tensors.pop("head.bias").clone()
    save_file(tensors, str(folder / WEIGHTS_NAME))
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["files"][WEIGHTS_NAME] = sha256_file(folder / WEIGHTS_NAME)
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(KeyMismatchError, match="missing: head.bias(.|\n)*unexpected: extra.weight"):
        zoo.from_pretrained(folder)
    lenient = zoo.from_pretrained(folder, strict=False)
    assert torch.equal(lenient.embed.weight, tiny_model.embed.weight)
    assert lenient.head.bias.device.type == "cpu"


def test_bad_sources_name_the_fix(tmp_path, tiny_model):
    with pytest.raises(ConfigError, match="architecture without published zoo weights.*create_model"):
        zoo.from_pretrained("tinytest-tiny")
    with pytest.raises(UnknownModelError, match="neither an existing folder nor a Hub repo id"):
        zoo.from_pretrained("./does/not/exist")
    folder = zoo.save_pretrained(tiny_model, tmp_path / "m")
    with pytest.raises(ConfigError, match="is a file; pass its folder"):
        zoo.from_pretrained(folder / WEIGHTS_NAME)


def test_failed_save_leaves_nothing_half_written(tmp_path, tiny_model, monkeypatch):
    target = tmp_path / "m"
    zoo.save_pretrained(tiny_model, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def broken(folder):
        raise OSError("disk full")

    monkeypatch.setattr(tiny_model, "save_tokenizer", broken)
    tiny_model.head.bias.data += 1
    with pytest.raises(OSError, match="disk full"):
        zoo.save_pretrained(tiny_model, target)
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before  # the previous folder is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left behind
    with pytest.raises(OSError):
        zoo.save_pretrained(tiny_model, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_hub_folder(tmp_path, tiny_model):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not a zoo hub folder; refusing to replace it"):
        zoo.save_pretrained(tiny_model, tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"


def test_loaded_model_keeps_training(tmp_path, tiny_model):
    folder = zoo.save_pretrained(tiny_model, tmp_path / "m")
    model = zoo.from_pretrained(folder).train()
    batch = model.example_batch(4)
    loss = model.training_step.__func__  # noqa: F841 - the module trains like a fresh one:
    out = torch.nn.functional.cross_entropy(model(batch), batch["labels"])
    out.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert os.fspath(folder)
