"""The real huggingface_hub client against the loopback Hub server (tests/hubserver.py, fixture ``hub``)."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import pytest
from huggingface_hub import (
    HfApi,
    HfFileSystem,
    ModelCard,
    ModelCardData,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

pytestmark = pytest.mark.timeout(60)


def _make_folder(root: Path) -> Path:
    folder = root / "export"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden": 8}')
    (folder / "weights.bin").write_bytes(os.urandom(4096) + b"\x00\xff" * 100)
    (folder / "sub" / "notes.txt").write_text("hello\n")
    (folder / "sub" / "deeper" / "empty.txt").write_bytes(b"")
    return folder


@pytest.fixture
def repo(hub, tmp_path):
    """A repo with one upload_folder commit on top of the initial commit: (repo_id, folder, commit_info)."""
    api = HfApi()
    repo_id = api.create_repo("tiny").repo_id
    folder = _make_folder(tmp_path)
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="first upload")
    return repo_id, folder, info


def test_fixture_points_client_at_loopback(hub):
    import huggingface_hub.constants as C

    assert hub.endpoint.startswith("http://127.0.0.1:")
    assert C.ENDPOINT == hub.endpoint == os.environ["HF_ENDPOINT"]
    assert C.HUGGINGFACE_CO_URL_TEMPLATE.startswith(hub.endpoint + "/")
    assert Path(C.HF_HUB_CACHE) == hub.cache_dir
    assert os.environ["HF_TOKEN"] == hub.token
    assert HfApi().whoami()["name"] == hub.user
    # the module-level helpers (bound to an HfApi built at import time) are re-pointed too
    import huggingface_hub

    assert huggingface_hub.create_repo("via-module-helper").repo_id == hub.repo_id("via-module-helper")
    # the client cannot leave loopback while the fixture is active
    with pytest.raises(OfflineModeIsEnabled, match="non-loopback"):
        HfApi(endpoint="https://huggingface.co").model_info("openai-community/gpt2")
    assert hub.blocked_requests == ["GET https://huggingface.co/api/models/openai-community/gpt2"]
    hub.blocked_requests.clear()


def test_create_repo_and_upload_folder_make_one_commit(hub, repo):
    repo_id, folder, info = repo
    assert repo_id == hub.repo_id("tiny")
    # the Hub's "initial commit" (.gitattributes) + exactly one commit for the whole folder
    assert hub.commit_count(repo_id) == 2
    commits = HfApi().list_repo_commits(repo_id)
    assert [c.title for c in commits] == ["first upload", "initial commit"]
    assert commits[0].commit_id == info.oid and len(info.oid) == 40
    assert HfApi().model_info(repo_id).sha == info.oid
    # create_repo: 409 without exist_ok, fine with it
    with pytest.raises(Exception) as excinfo:
        HfApi().create_repo(repo_id)
    assert excinfo.value.response.status_code == 409
    assert HfApi().create_repo(repo_id, exist_ok=True).repo_id == repo_id
    # re-uploading the same folder is a no-op (preupload returns the remote oids): no new commit
    HfApi().upload_folder(repo_id=repo_id, folder_path=folder)
    assert hub.commit_count(repo_id) == 2


def test_download_and_snapshot_identical_bytes(hub, repo):
    repo_id, folder, info = repo
    single = hf_hub_download(repo_id, "weights.bin")
    nested = hf_hub_download(repo_id, "sub/notes.txt")
    empty = hf_hub_download(repo_id, "sub/deeper/empty.txt")
    assert Path(single).read_bytes() == (folder / "weights.bin").read_bytes()
    assert Path(nested).read_text() == "hello\n"
    assert Path(empty).read_bytes() == b""
    assert str(hub.cache_dir) in single and info.oid in single
    snap = Path(snapshot_download(repo_id))
    assert snap.name == info.oid
    for rel in ("config.json", "weights.bin", "sub/notes.txt", "sub/deeper/empty.txt"):
        assert filecmp.cmp(snap / rel, folder / rel, shallow=False)
    assert (snap / "weights.bin").read_bytes() == Path(single).read_bytes()
    assert (snap / ".gitattributes").is_file()
    # the same to a local_dir, with patterns
    local = Path(snapshot_download(repo_id, local_dir=hub.home / "local", allow_patterns=["sub/*"]))
    assert (local / "sub" / "notes.txt").read_text() == "hello\n"
    assert not (local / "weights.bin").exists()


def test_model_info_and_list_repo_files(hub, repo):
    repo_id, _, info = repo
    api = HfApi()
    mi = api.model_info(repo_id)
    assert mi.id == repo_id and mi.sha == info.oid and mi.private is False
    names = sorted(s.rfilename for s in mi.siblings)
    expected = sorted(
        [".gitattributes", "config.json", "weights.bin", "sub/notes.txt", "sub/deeper/empty.txt"]
    )
    assert names == expected
    with_meta = api.model_info(repo_id, files_metadata=True)
    sizes = {s.rfilename: s.size for s in with_meta.siblings}
    assert sizes["weights.bin"] == 4296 and sizes["sub/deeper/empty.txt"] == 0
    assert sorted(api.list_repo_files(repo_id)) == expected
    top = {e.path: type(e).__name__ for e in api.list_repo_tree(repo_id)}
    assert top == {
        ".gitattributes": "RepoFile",
        "config.json": "RepoFile",
        "weights.bin": "RepoFile",
        "sub": "RepoFolder",
    }
    assert [e.path for e in api.list_repo_tree(repo_id, path_in_repo="sub")] == [
        "sub/deeper",
        "sub/notes.txt",
    ]
    assert api.file_exists(repo_id, "sub/notes.txt") and not api.file_exists(repo_id, "nope.txt")
    assert api.repo_exists(repo_id) and not api.repo_exists(hub.repo_id("nope"))
    paths = api.get_paths_info(repo_id, ["config.json", "sub", "missing"])
    assert [(p.path, type(p).__name__) for p in paths] == [("config.json", "RepoFile"), ("sub", "RepoFolder")]


def test_second_commit_keeps_first_revision(hub, repo):
    repo_id, _, first = repo
    api = HfApi()
    second = api.upload_file(path_or_fileobj=b'{"hidden": 16}', path_in_repo="config.json", repo_id=repo_id)
    api.delete_file("sub/notes.txt", repo_id=repo_id)
    head = api.model_info(repo_id).sha
    assert len({first.oid, second.oid, head}) == 3
    assert Path(hf_hub_download(repo_id, "config.json")).read_text() == '{"hidden": 16}'
    assert Path(hf_hub_download(repo_id, "config.json", revision=first.oid)).read_text() == '{"hidden": 8}'
    assert (
        Path(hf_hub_download(repo_id, "config.json", revision=first.oid[:10])).read_text() == '{"hidden": 8}'
    )
    assert Path(hf_hub_download(repo_id, "sub/notes.txt", revision=first.oid)).read_text() == "hello\n"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "sub/notes.txt")
    assert "sub/notes.txt" in api.list_repo_files(repo_id, revision=first.oid)
    assert "sub/notes.txt" not in api.list_repo_files(repo_id)
    old_snap = Path(snapshot_download(repo_id, revision=first.oid))
    assert (old_snap / "config.json").read_text() == '{"hidden": 8}'
    # parent_commit is checked: committing on top of a stale parent fails
    with pytest.raises(Exception) as excinfo:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, parent_commit=first.oid)
    assert excinfo.value.response.status_code == 412


def test_branch_and_tag(hub, repo):
    repo_id, _, first = repo
    api = HfApi()
    api.create_branch(repo_id, branch="dev")
    api.create_branch(repo_id, branch="dev", exist_ok=True)
    dev = api.upload_file(
        path_or_fileobj=b"dev only", path_in_repo="dev.txt", repo_id=repo_id, revision="dev"
    )
    assert Path(hf_hub_download(repo_id, "dev.txt", revision="dev")).read_bytes() == b"dev only"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "dev.txt")  # main is untouched
    assert api.model_info(repo_id).sha == first.oid
    assert api.model_info(repo_id, revision="dev").sha == dev.oid

    api.create_tag(repo_id, tag="v1.0", revision="dev", tag_message="release")
    with pytest.raises(Exception) as excinfo:
        api.create_tag(repo_id, tag="v1.0")
    assert excinfo.value.response.status_code == 409
    api.upload_file(path_or_fileobj=b"later", path_in_repo="dev.txt", repo_id=repo_id, revision="dev")
    assert Path(hf_hub_download(repo_id, "dev.txt", revision="v1.0")).read_bytes() == b"dev only"
    assert Path(hf_hub_download(repo_id, "dev.txt", revision="dev")).read_bytes() == b"later"
    assert Path(snapshot_download(repo_id, revision="v1.0")).name == dev.oid

    refs = api.list_repo_refs(repo_id)
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0", dev.oid)]
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "dev.txt", revision="no-such-branch")
    api.delete_tag(repo_id, tag="v1.0")
    api.delete_branch(repo_id, branch="dev")
    assert [b.name for b in api.list_repo_refs(repo_id).branches] == ["main"]


def test_create_pr(hub, repo):
    repo_id, _, first = repo
    api = HfApi()
    info = api.upload_file(
        path_or_fileobj=b"proposal", path_in_repo="pr.txt", repo_id=repo_id, create_pr=True
    )
    assert info.pr_revision == "refs/pr/1" and info.pr_num == 1
    assert info.pr_url.endswith(f"/{repo_id}/discussions/1")
    assert Path(hf_hub_download(repo_id, "pr.txt", revision="refs/pr/1")).read_bytes() == b"proposal"
    assert api.model_info(repo_id).sha == first.oid  # main unchanged
    more = api.upload_file(
        path_or_fileobj=b"v2", path_in_repo="pr.txt", repo_id=repo_id, revision=info.pr_revision
    )
    assert api.model_info(repo_id, revision="refs/pr/1").sha == more.oid
    refs = api.list_repo_refs(repo_id, include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests] == [("refs/pr/1", more.oid)]
    # upload_folder(create_pr=True) goes through the discussions API when hf_xet is installed
    folder = hub.home / "pr-folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    pr2 = api.upload_folder(repo_id=repo_id, folder_path=folder, create_pr=True)
    assert pr2.pr_revision == "refs/pr/2"
    assert Path(hf_hub_download(repo_id, "a.txt", revision="refs/pr/2")).read_text() == "a"


def test_model_card_roundtrip(hub, repo):
    repo_id, _, _ = repo
    data = ModelCardData(language="en", license="apache-2.0", library_name="zoo", tags=["zoo", "vision"])
    card = ModelCard.from_template(data, model_id="tiny", model_description="A tiny test model.")
    card.push_to_hub(repo_id)
    loaded = ModelCard.load(repo_id)
    assert loaded.data.license == "apache-2.0"
    assert loaded.data.library_name == "zoo"
    assert loaded.data.tags == ["zoo", "vision"]
    assert "A tiny test model." in loaded.text
    info = HfApi().model_info(repo_id)
    assert info.card_data.license == "apache-2.0" and info.library_name == "zoo"
    assert {"zoo", "vision"} <= set(info.tags)
    # a README with invalid YAML is refused by POST /api/validate-yaml before anything is committed
    commits = hub.commit_count(repo_id)
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        HfApi().upload_file(
            path_or_fileobj=b"---\nlicense: [unclosed\n---\n# hi\n", path_in_repo="README.md", repo_id=repo_id
        )
    assert hub.commit_count(repo_id) == commits


def test_offline_uses_cache_without_any_request(hub, repo):
    repo_id, _, info = repo
    online_file = hf_hub_download(repo_id, "config.json")
    online_snap = snapshot_download(repo_id)
    sha_file = hf_hub_download(repo_id, "sub/notes.txt", revision=info.oid)
    before = hub.request_count
    with hub.offline():
        from huggingface_hub import is_offline_mode

        assert is_offline_mode()
        assert hf_hub_download(repo_id, "config.json") == online_file
        assert hf_hub_download(repo_id, "config.json", revision="main") == online_file
        assert hf_hub_download(repo_id, "sub/notes.txt", revision=info.oid) == sha_file
        assert snapshot_download(repo_id) == online_snap
        assert snapshot_download(repo_id, revision=info.oid) == online_snap
        # a file that was never downloaded: LocalEntryNotFoundError, caused by OfflineModeIsEnabled
        with pytest.raises(LocalEntryNotFoundError) as excinfo:
            hf_hub_download(repo_id, "never-uploaded.txt")
        assert isinstance(excinfo.value.__cause__, OfflineModeIsEnabled)
        with pytest.raises(LocalEntryNotFoundError):
            snapshot_download(hub.repo_id("never-downloaded"))
        # direct API calls raise OfflineModeIsEnabled itself
        with pytest.raises(OfflineModeIsEnabled):
            HfApi().model_info(repo_id)
    assert hub.request_count == before  # offline() also asserts this
    assert not is_offline_mode()
    assert hf_hub_download(repo_id, "weights.bin")  # online again
    assert hub.request_count > before


def test_unknown_repo_and_file_errors(hub, repo):
    repo_id, _, _ = repo
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub.repo_id("does-not-exist"), "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(hub.repo_id("does-not-exist"))
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(hub.repo_id("does-not-exist"))
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "missing.bin")
    with pytest.raises(EntryNotFoundError):  # base class of RemoteEntryNotFoundError
        hf_hub_download(repo_id, "sub/missing.bin")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="0" * 40)
    with pytest.raises(RepositoryNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=hub.repo_id("does-not-exist"))


def test_private_repo_needs_token_and_delete(hub, tmp_path):
    api = HfApi()
    repo_id = api.create_repo("secret", private=True).repo_id
    api.upload_file(path_or_fileobj=b"s3cr3t", path_in_repo="key.txt", repo_id=repo_id)
    assert api.model_info(repo_id).private is True
    assert Path(hf_hub_download(repo_id, "key.txt")).read_bytes() == b"s3cr3t"
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "key.txt", token=False, cache_dir=tmp_path / "anon")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info(repo_id)
    api.delete_repo(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo_id)
    api.delete_repo(repo_id, missing_ok=True)


def test_hf_filesystem_reads_through_loopback(hub, repo):
    repo_id, folder, _ = repo
    fs = HfFileSystem()
    assert sorted(fs.ls(repo_id, detail=False)) == sorted(
        f"{repo_id}/{n}" for n in (".gitattributes", "config.json", "sub", "weights.bin")
    )
    with fs.open(f"hf://{repo_id}/weights.bin", "rb") as f:
        assert f.read() == (folder / "weights.bin").read_bytes()
