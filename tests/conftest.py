"""Shared pytest fixtures.

``hub``: a loopback Hugging Face Hub (see ``tests/hubserver.py``) that the real ``huggingface_hub`` client uses.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

try:  # tests/ on sys.path (rootdir conftest, no tests/__init__.py)
    from hubserver import DEFAULT_TOKEN, HubServer
except ImportError:  # pragma: no cover - tests/ imported as a package
    from tests.hubserver import DEFAULT_TOKEN, HubServer


_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class LoopbackHub:
    """What the ``hub`` fixture yields. See the fixture docstring for what is patched."""

    server: HubServer
    endpoint: str
    token: str
    user: str
    home: Path
    cache_dir: Path
    #: "METHOD url" of client requests refused because they were not for loopback; must be empty at teardown
    blocked_requests: list[str] = field(default_factory=list)

    # -- convenience -----------------------------------------------------------------------------
    @property
    def api(self):
        """A fresh ``HfApi`` bound to the loopback endpoint and token."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)

    def repo_id(self, name: str) -> str:
        """``"<user>/<name>"``: the id ``create_repo(name)`` gives when no namespace is passed."""
        return f"{self.user}/{name}"

    @property
    def request_count(self) -> int:
        """Number of HTTP requests the server has received so far (all routes, all methods)."""
        return self.server.request_count

    @property
    def request_log(self) -> list[tuple[str, str]]:
        """``(method, raw path)`` of every request received, oldest first (last 10000)."""
        return list(self.server.request_log)

    def commit_count(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> int:
        """Commits in the history of ``revision`` on the server (the repo's initial commit included)."""
        return self.server.commit_count(repo_id, revision, repo_type)

    @contextlib.contextmanager
    def offline(self, assert_no_requests: bool = True) -> Iterator[LoopbackHub]:
        """Make the client behave as with ``HF_HUB_OFFLINE=1`` inside the block.

        Patches ``huggingface_hub.constants.HF_HUB_OFFLINE`` (read at call time by ``is_offline_mode()``, which
        ``hf_hub_download``, ``snapshot_download``, the HTTP request hook and transformers all consult), sets the
        ``HF_HUB_OFFLINE`` env var (for subprocesses) and, if ``datasets`` is already imported, its
        ``config.HF_HUB_OFFLINE``. Every request the client would send raises ``OfflineModeIsEnabled`` before it
        leaves the process. With ``assert_no_requests`` (default) the block fails if any request reached the server.
        """
        import huggingface_hub.constants as hf_constants

        saved_env = os.environ.get("HF_HUB_OFFLINE")
        saved_const = hf_constants.HF_HUB_OFFLINE
        ds_config = sys.modules.get("datasets.config")
        saved_ds = (
            getattr(ds_config, "HF_HUB_OFFLINE", None),
            getattr(ds_config, "HF_DATASETS_OFFLINE", None),
        )
        before = self.server.request_count
        hf_constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"
        if ds_config is not None:
            ds_config.HF_HUB_OFFLINE = ds_config.HF_DATASETS_OFFLINE = True
        try:
            yield self
        finally:
            hf_constants.HF_HUB_OFFLINE = saved_const
            if saved_env is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = saved_env
            if ds_config is not None:
                ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE = saved_ds
        if assert_no_requests:
            after = self.server.request_count
            assert after == before, f"{after - before} request(s) reached the hub in offline mode: " + repr(
                self.request_log[before - after :]
            )


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackHub]:
    """A loopback Hugging Face Hub that the *real* ``huggingface_hub`` client talks to (function scope).

    Starts ``tests/hubserver.HubServer`` on ``127.0.0.1:<free port>`` (repos on disk under ``tmp_path/hub-server``)
    and points the client at it for the duration of the test; everything is restored afterwards.

    Patched (all through ``monkeypatch``, so undone at teardown):

    * env: ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_ASSETS_CACHE``, ``HF_XET_CACHE``, ``HF_TOKEN``
      (= ``hub.token``), ``HF_TOKEN_PATH``, ``HF_HUB_DISABLE_TELEMETRY=1``, ``NO_PROXY``/``no_proxy`` += loopback;
      ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``, ``HF_DATASETS_OFFLINE``, ``HUGGING_FACE_HUB_TOKEN`` removed.
      (Subprocesses started by the test inherit these, so they reach the same server.)
    * ``huggingface_hub.constants``: ``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE`` (what ``hf_hub_url`` /
      ``hf_hub_download`` format), ``HF_URL_HOSTS``, ``HF_HOME``, ``HF_HUB_CACHE``/``HUGGINGFACE_HUB_CACHE``,
      ``HF_ASSETS_CACHE``/``HUGGINGFACE_ASSETS_CACHE``, ``HF_XET_CACHE``, ``HF_TOKEN_PATH``, ``HF_STORED_TOKENS_PATH``,
      ``AGENT_HARNESSES_PATH``, ``CHECK_FOR_UPDATE_DONE_PATH``, ``HF_HUB_OFFLINE=False``,
      ``HF_HUB_DISABLE_TELEMETRY=True``, ``HF_HUB_DISABLE_IMPLICIT_TOKEN=False``; module copies bound at import:
      ``utils._cache_manager.HF_HUB_CACHE``, ``utils._cache_assets.HF_ASSETS_CACHE``, ``utils._http._HUB_ORIGINS``;
      ``huggingface_hub.hf_api.api.endpoint`` (the ``HfApi`` behind the module-level ``upload_file``,
      ``create_repo``, ... functions, built at import time); ``datasets.config.HF_ENDPOINT``/``HUB_DATASETS_URL``/
      ``HF_HUB_OFFLINE`` if ``datasets`` is already imported.
    * ``huggingface_hub.utils._http.hf_request_event_hook`` is wrapped so that the client's session refuses any
      non-loopback host (raises ``OfflineModeIsEnabled``; the test then fails at teardown, listing the URLs).
    * the shared ``httpx2`` client is closed before and after (no pooled connection to a dead port), and
      ``HfFileSystem``'s instance cache is cleared (``hf://`` paths, e.g. Lightning, pick up the endpoint).

    Yields a ``LoopbackHub``:

    * ``.endpoint`` (``http://127.0.0.1:PORT``), ``.token`` (accepted token; also in ``HF_TOKEN``), ``.user``
      (namespace ``create_repo("name")`` uses), ``.repo_id(name)`` -> ``"<user>/<name>"``, ``.api`` (an ``HfApi``)
    * ``.home`` (``HF_HOME``) and ``.cache_dir`` (``HF_HUB_CACHE`` = ``home/hub``), fresh per test
    * ``.offline()``: context manager simulating ``HF_HUB_OFFLINE=1``; asserts no request reached the server
    * ``.request_count`` / ``.request_log``: every request the server received; ``.commit_count(repo_id, rev)``
    * ``.blocked_requests``: non-loopback requests the guard refused (clear it if a test provokes one on purpose)
    * ``.server``: the ``HubServer`` (``.server.repo(repo_id)`` gives branches/tags/commits for white-box checks)

    Example::

        def test_roundtrip(hub, tmp_path):
            from huggingface_hub import HfApi, hf_hub_download
            api = HfApi()  # endpoint and token come from the patched constants / HF_TOKEN
            repo_id = api.create_repo("my-model").repo_id  # "zoo-tester/my-model"
            api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "export")
            path = hf_hub_download(repo_id, "config.json")
            with hub.offline():
                assert hf_hub_download(repo_id, "config.json") == path

    The server only supports "regular" (non-LFS, non-Xet) uploads: it answers ``uploadMode: "regular"`` to every
    preupload request, so no LFS/Xet transfer is ever attempted. The fixture fails the test at teardown if the
    server hit an internal error (``hub.server.errors``).
    """
    import huggingface_hub
    import huggingface_hub.constants as C
    from huggingface_hub import hf_api
    from huggingface_hub.errors import OfflineModeIsEnabled
    from huggingface_hub.utils import _cache_assets, _cache_manager, _http

    server = HubServer(root=tmp_path / "hub-server").start()
    endpoint = server.endpoint
    home = tmp_path / "hf-home"
    cache_dir = home / "hub"
    cache_dir.mkdir(parents=True)
    token = DEFAULT_TOKEN

    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache_dir),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN": token,
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key in ("NO_PROXY", "no_proxy"):
        current = os.environ.get(key)
        monkeypatch.setenv(key, ",".join(filter(None, [current, "127.0.0.1", "localhost"])))

    constants = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(C.HF_URL_HOSTS | {"127.0.0.1"}),
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache_dir),
        "HUGGINGFACE_HUB_CACHE": str(cache_dir),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
    }
    for name, value in constants.items():
        monkeypatch.setattr(C, name, value, raising=False)
    # `huggingface_hub.upload_file`, `create_repo`, ... are bound methods of `hf_api.api = HfApi()`, built at
    # import time with the endpoint of that moment (ModelCard.push_to_hub uses them): re-point that instance.
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(cache_dir), raising=False)
    monkeypatch.setattr(_cache_assets, "HF_ASSETS_CACHE", str(home / "assets"), raising=False)
    if hasattr(_http, "_HUB_ORIGINS") and hasattr(_http, "_url_origin"):
        monkeypatch.setattr(
            _http, "_HUB_ORIGINS", frozenset(_http._HUB_ORIGINS | {_http._url_origin(endpoint)})
        )
    # Guard: the client's HTTP session may only talk to loopback while the fixture is active. The default client
    # factory looks `hf_request_event_hook` up at client-creation time, and the session is recreated below.
    blocked: list[str] = []  # exposed as hub.blocked_requests
    original_hook = _http.hf_request_event_hook

    def _loopback_only_hook(request):
        if request.url.host not in _LOOPBACK_HOSTS:
            blocked.append(f"{request.method} {request.url}")
            raise OfflineModeIsEnabled(f"loopback hub fixture: blocked non-loopback request to {request.url}")
        return original_hook(request)

    monkeypatch.setattr(_http, "hf_request_event_hook", _loopback_only_hook)
    ds_config = sys.modules.get("datasets.config")
    if ds_config is not None:
        monkeypatch.setattr(ds_config, "HF_ENDPOINT", endpoint, raising=False)
        monkeypatch.setattr(
            ds_config,
            "HUB_DATASETS_URL",
            endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
            raising=False,
        )
        monkeypatch.setattr(ds_config, "HF_HUB_OFFLINE", False, raising=False)
        monkeypatch.setattr(ds_config, "HF_DATASETS_OFFLINE", False, raising=False)

    def _reset_client_caches() -> None:
        huggingface_hub.close_session()
        with contextlib.suppress(Exception):
            from huggingface_hub import HfFileSystem

            HfFileSystem.clear_instance_cache()

    _reset_client_caches()
    try:
        yield LoopbackHub(
            server=server,
            endpoint=endpoint,
            token=token,
            user=server.user,
            home=home,
            cache_dir=cache_dir,
            blocked_requests=blocked,
        )
    finally:
        _reset_client_caches()
        server.stop()
    assert not server.errors, "loopback hub internal error(s):\n" + "\n".join(server.errors)
    assert not blocked, f"huggingface_hub tried to reach non-loopback hosts: {blocked}"


# --------------------------------------------------------------------------------------------- zoo-wide test setup
import torch  # noqa: E402

torch.set_num_threads(1)  # 2 shared cores: one thread per process is faster and steadier here
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny_family  # noqa: E402,F401  (registers the tiny test family before any test looks it up)


@pytest.fixture(scope="session", autouse=True)
def _zoo_cache(tmp_path_factory):
    """Every test session gets its own zoo cache (tokenized datasets, built samples): hermetic runs."""
    previous = os.environ.get("ZOO_CACHE")
    os.environ["ZOO_CACHE"] = str(tmp_path_factory.mktemp("zoo-cache"))
    yield
    if previous is None:
        os.environ.pop("ZOO_CACHE", None)
    else:
        os.environ["ZOO_CACHE"] = previous


@pytest.fixture
def tiny_model():
    """A randomly initialised tiny test model with a trained tokenizer attached, in eval mode."""
    from tiny_family import TinyClassifier, TinyData

    data = TinyData()
    data.setup("fit")
    model = TinyClassifier()
    model.attach_tokenizer(data.tokenizer)
    return model.eval()
