"""push -> pull -> from_pretrained through the real huggingface_hub client and the loopback Hub."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard
from tiny_family import TinyClassifier

import zoo
from zoo import registry
from zoo.errors import KeyMismatchError, OfflineError, UnknownModelError
from zoo.registry import ModelEntry, UpstreamCheckpoint


def test_push_pull_load_gives_identical_outputs_in_one_commit(hub, tmp_path, tiny_model):
    folder = zoo.save_pretrained(tiny_model, tmp_path / "export")
    repo_id = hub.repo_id("tiny-classifier")
    zoo.push_to_hub(folder, repo_id)
    assert hub.commit_count(repo_id) == 2  # the repo's initial commit + ONE upload commit
    loaded = zoo.from_pretrained(repo_id)
    batch = tiny_model.example_batch(4)
    assert torch.equal(loaded(batch), tiny_model(batch))
    card = ModelCard.load(repo_id)
    assert card.data.library_name == "zoo" and "tinytest" in card.data.tags


def test_offline_loads_from_cache_without_any_request(hub, tmp_path, tiny_model):
    repo_id = hub.repo_id("tiny-offline")
    zoo.push_to_hub(zoo.save_pretrained(tiny_model, tmp_path / "export"), repo_id)
    online = zoo.from_pretrained(repo_id)
    with hub.offline():  # HF_HUB_OFFLINE=1; asserts that no request reaches the server
        offline = zoo.from_pretrained(repo_id)
        with pytest.raises(OfflineError, match="not in the local Hugging Face cache.*Connect once"):
            zoo.from_pretrained(hub.repo_id("never-downloaded"))
    batch = tiny_model.example_batch()
    assert torch.equal(offline(batch), online(batch))


def test_offline_with_an_empty_cache_names_the_fix(hub, tmp_path, tiny_model):
    repo_id = hub.repo_id("tiny-cold")
    zoo.push_to_hub(zoo.save_pretrained(tiny_model, tmp_path / "export"), repo_id)
    with hub.offline():
        with pytest.raises(OfflineError, match="not in the local Hugging Face cache"):
            zoo.from_pretrained(repo_id)
    with pytest.raises(OfflineError):
        zoo.from_pretrained(repo_id, local_files_only=True)


def test_revisions_branches_and_pull_requests(hub, tmp_path, tiny_model):
    repo_id = hub.repo_id("tiny-revisions")
    first = zoo.push_to_hub(zoo.save_pretrained(tiny_model, tmp_path / "v1"), repo_id)
    changed = TinyClassifier(hidden=16).eval()
    changed.attach_tokenizer(tiny_model.tokenizer)
    zoo.push_to_hub(zoo.save_pretrained(changed, tmp_path / "v2"), repo_id, branch="experiment")
    pr = zoo.push_to_hub(zoo.save_pretrained(changed, tmp_path / "v3"), repo_id, create_pr=True)
    batch = tiny_model.example_batch()
    assert torch.equal(zoo.from_pretrained(repo_id)(batch), tiny_model(batch))  # main untouched by branch and PR
    assert torch.equal(zoo.from_pretrained(repo_id, revision="experiment")(batch), changed(batch))
    assert torch.equal(zoo.from_pretrained(repo_id, revision=first.oid)(batch), tiny_model(batch))
    assert pr.pr_url and torch.equal(zoo.from_pretrained(repo_id, revision=pr.pr_revision)(batch), changed(batch))
    with pytest.raises(UnknownModelError, match="has no such revision"):
        zoo.from_pretrained(repo_id, revision="no-such-branch")


def test_private_repo_needs_the_token(hub, tmp_path, tiny_model, monkeypatch):
    repo_id = hub.repo_id("tiny-private")
    zoo.push_to_hub(zoo.save_pretrained(tiny_model, tmp_path / "export"), repo_id, private=True)
    assert zoo.from_pretrained(repo_id, token=hub.token) is not None
    monkeypatch.delenv("HF_TOKEN")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    with pytest.raises(UnknownModelError, match="no Hub repository.*or it is private: pass token="):
        zoo.from_pretrained(repo_id, cache_dir=str(tmp_path / "fresh-cache"))


def test_unknown_hub_repo_suggests_registered_names(hub):
    with pytest.raises(UnknownModelError, match="no Hub repository 'someone/tinytest-tin'"):
        zoo.from_pretrained("someone/tinytest-tin")


# ----------------------------------------------------------------------------------------- upstream conversion
def convert_upstream_tiny(folder):
    """A converter in the registry's contract: upstream files in -> ready ZooModule out (strict)."""
    config = json.loads((folder / "config.json").read_text())
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    renamed = {"embed.weight": "embeddings.word_embeddings.weight", "proj.weight": "pooler.dense.weight",
               "proj.bias": "pooler.dense.bias", "head.weight": "classifier.weight", "head.bias": "classifier.bias"}
    module = TinyClassifier(vocab_size=config["vocab_size"], hidden=config["hidden_size"],
                            num_labels=config["num_labels"])
    missing = [up for up in renamed.values() if up not in state]
    unexpected = [k for k in state if k not in renamed.values()]
    if missing or unexpected:
        raise KeyMismatchError(f"upstream checkpoint does not fit: missing {missing}, unexpected {unexpected}",
                               missing, unexpected)
    module.load_state_dict({ours: state[up] for ours, up in renamed.items()}, strict=True)
    return module.eval()


def write_upstream_layout(folder, module):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"vocab_size": 64, "hidden_size": 16, "num_labels": 2}))
    s = module.state_dict()
    torch.save({"embeddings.word_embeddings.weight": s["embed.weight"], "pooler.dense.weight": s["proj.weight"],
                "pooler.dense.bias": s["proj.bias"], "classifier.weight": s["head.weight"],
                "classifier.bias": s["head.bias"]}, folder / "pytorch_model.bin")


def test_known_upstream_id_is_downloaded_at_its_pinned_revision_and_converted(hub, tmp_path, monkeypatch):
    reference = TinyClassifier().eval()
    write_upstream_layout(tmp_path / "upstream", reference)
    repo_id = hub.repo_id("upstream-tiny")
    api = hub.api
    api.create_repo(repo_id)
    pinned = api.upload_folder(repo_id=repo_id, folder_path=str(tmp_path / "upstream")).oid
    api.upload_file(repo_id=repo_id, path_or_fileobj=b"{}", path_in_repo="config.json")  # upstream moves on
    entry = ModelEntry(name="tinytest-upstream", family="tinytest", module_class=TinyClassifier, config={},
                       paper=registry.model_info("tinytest").paper, license="apache-2.0",
                       upstream=(UpstreamCheckpoint(repo_id=repo_id, revision=pinned, model="tinytest-upstream",
                                                    converter=convert_upstream_tiny),))
    monkeypatch.setitem(registry._REGISTRY.models, entry.name, entry)
    monkeypatch.setitem(registry._REGISTRY.upstream, repo_id, entry.upstream[0])
    loaded = zoo.from_pretrained(repo_id)  # the pinned revision, not the broken newer commit
    batch = reference.example_batch()
    assert torch.equal(loaded(batch), reference(batch))
    assert loaded.converted_from == {"repo_id": repo_id, "revision": pinned}

    from zoo.cli import main

    assert main(["convert", "tinytest", repo_id, str(tmp_path / "converted")]) == 0
    converted = zoo.from_pretrained(tmp_path / "converted")
    assert torch.equal(converted(batch), reference(batch))
    card = ModelCard.load(tmp_path / "converted" / "README.md")
    assert card.data.base_model == repo_id and pinned in card.text
