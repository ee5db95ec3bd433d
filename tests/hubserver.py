"""A loopback Hugging Face Hub-protocol server for tests.

The *real* ``huggingface_hub`` client (``HfApi``, ``hf_hub_download``, ``snapshot_download``,
``ModelCard.push_to_hub`` / ``ModelCard.load``, ``HfFileSystem``) talks to it over HTTP on 127.0.0.1.
Standard library only (``http.server.ThreadingHTTPServer`` in a background thread); nothing but the
loopback interface is ever used.

What it implements (learned from huggingface_hub 2.4 client code, see ``ROUTES`` below):

* repos: ``POST /api/repos/create`` (409 + ``{"url": ...}`` when the repo exists, as the client reads
  the url even on 409 with ``exist_ok=True``), ``DELETE /api/repos/delete``, ``PUT .../settings``.
  A new repo gets an ``initial commit`` containing ``.gitattributes``, like the real Hub.
* info: ``GET /api/{models,datasets,spaces,kernels}/{ns}/{name}[/revision/{rev}]`` with ``sha``,
  ``siblings`` (``?blobs=1`` adds ``size``/``blobId``), ``private``, ``tags``, ``cardData`` (README YAML).
* files: ``GET .../tree/{rev}[/{path}]?recursive=``, ``POST .../paths-info/{rev}``,
  ``GET/HEAD /{repo}/resolve/{rev}/{path}`` (``X-Repo-Commit``, ``ETag`` = git blob sha1, ``Content-Length``,
  ``Range``), 404s carry ``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound``, which
  ``hf_raise_for_status`` maps to ``RepositoryNotFoundError`` / ``RevisionNotFoundError`` /
  ``RemoteEntryNotFoundError``.
* writes: ``POST .../preupload/{rev}`` (always ``"regular"``: no LFS, no Xet; returns the remote ``oid`` so
  that the client skips unchanged files), ``POST .../commit/{rev}`` (NDJSON: ``header``, ``file`` (base64),
  ``deletedFile``, ``deletedFolder``; ``parentCommit`` checked -> 412; ``?create_pr=1`` -> ``refs/pr/N``).
* refs: ``POST/DELETE .../branch/{branch}``, ``POST .../tag/{rev}``, ``DELETE .../tag/{tag}``,
  ``GET .../refs[?include_prs=1]``, ``GET .../commits/{rev}`` (full history, newest first).
* pull requests: ``POST .../discussions`` (``pullRequest: true`` opens ``refs/pr/N``), ``GET .../discussions/{N}``
  (``upload_folder(create_pr=True)`` uses these when ``hf_xet`` is installed).
* misc: ``POST /api/validate-yaml``, ``GET /api/whoami-v2``, ``GET /api/agent-harnesses`` (the client fetches it
  once per process from ``constants.ENDPOINT`` while building its User-Agent).

Every commit has a 40-hex sha and is kept forever; branches, tags and PR refs point at commits, and any of
them (or a full/short commit sha) works as a revision. Private repos need the server token. Blobs are stored
on disk (content-addressed, ``<root>/blobs``), repo metadata is mirrored to ``<root>/repos/.../meta.json``.
Every request is counted (``HubServer.request_count``, ``HubServer.request_log``) so that tests can prove
that nothing reached the server (e.g. in offline mode).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["DEFAULT_TOKEN", "DEFAULT_USER", "HubServer"]

DEFAULT_TOKEN = "hf_loopbackTestTokenForZooTests"
DEFAULT_USER = "zoo-tester"

MAX_BODY_BYTES = 1 << 30  # refuse request bodies above 1 GiB
MAX_LOG_ENTRIES = 10_000
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_HEX_RE = re.compile(r"^[0-9a-f]{7,40}$")
_FRONT_MATTER_RE = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")
_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.ckpt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pth filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_sha1(data: bytes) -> str:
    """The git blob oid of ``data`` (what the Hub returns as ``oid``/``ETag`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


class HubError(Exception):
    """An HTTP error answered to the client, with the Hub's ``X-Error-Code`` convention."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


@dataclass
class Commit:
    id: str
    parents: list[str]
    tree: dict[str, tuple[str, int]]  # path -> (blob sha1, size)
    title: str
    message: str
    date: str
    author: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: dict[int, str] = field(default_factory=dict)
    discussions: dict[int, dict] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "type": self.repo_type,
            "id": self.repo_id,
            "private": self.private,
            "createdAt": self.created_at,
            "branches": self.branches,
            "tags": self.tags,
            "prs": {str(k): v for k, v in self.prs.items()},
            "discussions": {str(k): v for k, v in self.discussions.items()},
            "commits": {
                sha: {
                    "parents": c.parents,
                    "tree": {p: list(v) for p, v in c.tree.items()},
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "author": c.author,
                }
                for sha, c in self.commits.items()
            },
        }


class HubState:
    """Repos, commits and refs; blobs content-addressed on disk. All access under ``self.lock``."""

    def __init__(self, root: Path, token: str, user: str):
        self.root = root
        self.token = token
        self.user = user
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self._counter = itertools.count()
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "repos").mkdir(parents=True, exist_ok=True)

    # -- blobs ---------------------------------------------------------------------------------------
    def _blob_path(self, sha: str) -> Path:
        return self.root / "blobs" / sha[:2] / sha

    def put_blob(self, data: bytes) -> str:
        sha = git_blob_sha1(data)
        path = self._blob_path(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    def get_blob(self, sha: str) -> bytes:
        return self._blob_path(sha).read_bytes()

    # -- repos ---------------------------------------------------------------------------------------
    def persist(self, repo: Repo) -> None:
        path = self.root / "repos" / repo.repo_type / repo.repo_id / "meta.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(repo.to_json(), indent=1))

    def get_repo(self, repo_type: str, repo_id: str, authorized: bool) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            status = 401 if repo is not None else 404
            raise HubError(status, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def new_commit(
        self,
        repo: Repo,
        parent: str | None,
        tree: dict,
        title: str,
        message: str = "",
        author: str | None = None,
    ) -> Commit:
        date = _now_iso()
        payload = json.dumps(
            [
                repo.repo_type,
                repo.repo_id,
                parent,
                sorted(tree.items()),
                title,
                message,
                date,
                next(self._counter),
            ]
        )
        sha = hashlib.sha1(payload.encode()).hexdigest()
        commit = Commit(
            sha, [parent] if parent else [], dict(tree), title, message, date, author or self.user
        )
        repo.commits[sha] = commit
        return commit

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type, repo_id, private, _now_iso())
        sha = self.put_blob(_GITATTRIBUTES)
        first = self.new_commit(repo, None, {".gitattributes": (sha, len(_GITATTRIBUTES))}, "initial commit")
        repo.branches["main"] = first.id
        self.repos[(repo_type, repo_id)] = repo
        self.persist(repo)
        return repo

    @staticmethod
    def resolve(repo: Repo, rev: str) -> str:
        """Commit sha of a branch, tag, ``refs/...`` name or (short) commit sha; 404 RevisionNotFound else."""
        if rev in repo.branches:
            return repo.branches[rev]
        if rev in repo.tags:
            return repo.tags[rev]
        if rev.startswith("refs/heads/") and rev[11:] in repo.branches:
            return repo.branches[rev[11:]]
        if rev.startswith("refs/tags/") and rev[10:] in repo.tags:
            return repo.tags[rev[10:]]
        m = re.fullmatch(r"refs/pr/(\d+)", rev)
        if m and int(m.group(1)) in repo.prs:
            return repo.prs[int(m.group(1))]
        if rev in repo.commits:
            return rev
        if _HEX_RE.match(rev):
            found = [sha for sha in repo.commits if sha.startswith(rev)]
            if len(found) == 1:
                return found[0]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def history(self, repo: Repo, sha: str) -> list[Commit]:
        out, seen = [], set()
        cur: str | None = sha
        while cur is not None and cur not in seen and len(out) <= len(repo.commits):
            seen.add(cur)
            commit = repo.commits[cur]
            out.append(commit)
            cur = commit.parents[0] if commit.parents else None
        return out


def _split_front_matter(text: str) -> tuple[str | None, str]:
    m = _FRONT_MATTER_RE.search(text)
    if not m:
        return None, text
    return m.group(2), text[m.end() :]


def _parse_yaml(text: str):
    try:
        import yaml  # pyyaml is a project dependency; without it metadata is not parsed
    except ImportError:  # pragma: no cover
        return {}
    return yaml.safe_load(text)


def _card_data(readme: bytes | None) -> dict | None:
    if readme is None:
        return None
    front, _ = _split_front_matter(readme.decode("utf-8", errors="replace"))
    if front is None:
        return None
    try:
        data = _parse_yaml(front)
    except Exception:  # noqa: BLE001
        return None
    return data if isinstance(data, dict) else None


def _normalize_repo_path(path: str) -> str:
    path = path.strip()
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1.0"
    timeout = 30  # idle keep-alive connections end after this many seconds

    hub: HubServer  # set on the subclass created per server

    # -- plumbing --------------------------------------------------------------------------------
    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            for _ in range(1_000_000):
                size = int(self.rfile.readline(100).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline(100)
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    raise HubError(413, "Request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(100)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise HubError(413, "Request body too large")
        return self.rfile.read(length) if length > 0 else b""

    @property
    def base_url(self) -> str:
        return f"http://{self.headers.get('Host') or self.hub.host_port}"

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict | None = None,
        content_type: str = "application/json",
    ):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(
                key, str(value).encode("latin-1", "replace").decode("latin-1").replace("\n", " ")
            )
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        return auth == f"Bearer {self.hub.token}"

    def _require_auth(self) -> None:
        auth = self.headers.get("Authorization")
        if not auth:
            raise HubError(401, "You must be authenticated to access this resource")
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        parts = urlsplit(self.path)
        with hub.state.lock:
            hub.request_count += 1
            hub.request_log.append((method, self.path))
        try:
            body = self._read_body() if method in ("POST", "PUT", "DELETE") else b""
            self.query = {k: v for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            raw = parts.path.split("/")[1:]
            segs = [unquote(s) for s in raw]
            with hub.state.lock:
                self._route(method, segs, body)
        except HubError as e:
            headers = dict(e.headers)
            headers["X-Error-Message"] = e.message
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json({"error": e.message}, e.status, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug in the fake: record it and fail fast
            # 501, not 500: the client retries 500/502/503/504 with backoff (~25 s), 501 fails at once.
            hub.errors.append(f"{method} {self.path}: {traceback.format_exc()}")
            try:
                self._json({"error": f"loopback hub internal error: {e!r}"}, 501)
            except Exception:  # noqa: BLE001
                self.close_connection = True

    def _qbool(self, name: str) -> bool:
        values = self.query.get(name)
        return bool(values) and values[-1].lower() in ("1", "true", "yes", "on")

    # -- routing ---------------------------------------------------------------------------------
    def _route(self, method: str, segs: list[str], body: bytes) -> None:
        if segs and segs[0] == "api":
            return self._route_api(method, segs[1:], body)
        # /{prefix}{ns}/{name}/resolve/{rev}/{path}
        repo_type = "model"
        if segs and segs[0] in _REPO_TYPES and len(segs) > 4 and segs[3] == "resolve":
            repo_type = _REPO_TYPES[segs[0]]
            segs = segs[1:]
        if method in ("GET", "HEAD") and len(segs) >= 4 and segs[2] == "resolve":
            rev, rest = self._split_rev(segs[3:])
            return self._resolve_file(repo_type, "/".join(segs[:2]), rev, "/".join(rest))
        if method in ("GET", "HEAD") and len(segs) >= 3 and segs[1] == "resolve":
            raise HubError(404, "Repository not found", "RepoNotFound")
        raise HubError(404, f"No route for {method} /{'/'.join(segs)}")

    @staticmethod
    def _split_rev(segs: list[str]) -> tuple[str, list[str]]:
        """First path element is the revision; accept unquoted ``refs/pr/N`` / ``refs/heads/x`` too."""
        if not segs:
            raise HubError(400, "Missing revision")
        if segs[0] == "refs" and len(segs) >= 3 and segs[1] in ("pr", "heads", "tags", "convert"):
            return "/".join(segs[:3]), segs[3:]
        return segs[0], segs[1:]

    def _route_api(self, method: str, segs: list[str], body: bytes) -> None:
        head = segs[0] if segs else ""
        if head == "whoami-v2" and method == "GET":
            self._require_auth()
            return self._json(
                {
                    "type": "user",
                    "id": "0" * 24,
                    "name": self.hub.user,
                    "fullname": "Zoo Tester",
                    "email": None,
                    "orgs": [],
                    "auth": {
                        "type": "access_token",
                        "accessToken": {"displayName": "loopback", "role": "write"},
                    },
                }
            )
        if head == "agent-harnesses" and method == "GET":
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if head == "validate-yaml" and method == "POST":
            return self._validate_yaml(body)
        if head == "repos" and len(segs) == 2:
            if segs[1] == "create" and method == "POST":
                return self._create_repo(body)
            if segs[1] == "delete" and method == "DELETE":
                return self._delete_repo(body)
        if head in _REPO_TYPES and len(segs) >= 3:
            repo_type = _REPO_TYPES[head]
            repo_id = f"{segs[1]}/{segs[2]}"
            action, rest = (segs[3], segs[4:]) if len(segs) > 3 else ("", [])
            return self._repo_api(method, repo_type, repo_id, action, rest, body)
        if head in _REPO_TYPES and len(segs) == 2:  # namespace-less ids are never created here
            raise HubError(404, "Repository not found", "RepoNotFound")
        raise HubError(404, f"No route for {method} /api/{'/'.join(segs)}")

    def _repo_api(self, method, repo_type, repo_id, action, rest, body):
        state = self.hub.state
        repo = state.get_repo(repo_type, repo_id, self._authorized())
        if action == "" and method == "GET":
            return self._json(self._repo_info(repo, repo.branches.get("main")))
        if action == "revision" and method == "GET" and rest:
            rev, _ = self._split_rev(rest)
            return self._json(self._repo_info(repo, state.resolve(repo, rev)))
        if action == "tree" and method == "GET" and rest:
            rev, path = self._split_rev(rest)
            return self._tree(repo, state.resolve(repo, rev), "/".join(path))
        if action == "paths-info" and method == "POST" and rest:
            rev, _ = self._split_rev(rest)
            return self._paths_info(repo, state.resolve(repo, rev), body)
        if action == "commits" and method == "GET" and rest:
            rev, _ = self._split_rev(rest)
            return self._commits(repo, state.resolve(repo, rev))
        if action == "refs" and method == "GET":
            return self._refs(repo)
        if action == "auth-check" and method == "GET":
            return self._json({"ok": True})
        if action == "discussions" and method == "GET" and len(rest) == 1 and rest[0].isdigit():
            return self._discussion(repo, int(rest[0]))
        # everything below writes
        self._require_auth()
        if action == "preupload" and method == "POST" and rest:
            rev, _ = self._split_rev(rest)
            return self._preupload(repo, rev, body)
        if action == "commit" and method == "POST" and rest:
            rev, _ = self._split_rev(rest)
            return self._commit(repo, rev, body)
        if action == "branch" and rest:
            name = "/".join(rest)
            if method == "POST":
                return self._create_branch(repo, name, body)
            if method == "DELETE":
                return self._delete_branch(repo, name)
        if action == "tag" and rest:
            if method == "POST":
                rev, _ = self._split_rev(rest)
                return self._create_tag(repo, rev, body)
            if method == "DELETE":
                return self._delete_tag(repo, "/".join(rest))
        if action == "discussions" and method == "POST" and not rest:
            return self._create_discussion(repo, body)
        if action == "settings" and method == "PUT":
            return self._settings(repo, body)
        raise HubError(404, f"No route for {method} {action} on {repo_id}")

    # -- misc ------------------------------------------------------------------------------------
    def _validate_yaml(self, body: bytes) -> None:
        content = json.loads(body or b"{}").get("content") or ""
        front, _ = _split_front_matter(content)
        errors = []
        if front is not None:
            try:
                data = _parse_yaml(front)
                if data is not None and not isinstance(data, dict):
                    errors.append({"message": "YAML metadata must be a mapping"})
            except Exception as e:  # noqa: BLE001
                errors.append({"message": f"Invalid YAML in metadata: {e}"})
        if errors:
            if "text/plain" in (self.headers.get("Accept") or ""):
                msg = "\n".join(err["message"] for err in errors).encode()
                return self._send(400, msg, content_type="text/plain")
            return self._json({"errors": errors, "warnings": []}, 400)
        return self._json({"errors": [], "warnings": []})

    # -- repos -----------------------------------------------------------------------------------
    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.base_url}/{_TYPE_PREFIX.get(repo_type, '')}{repo_id}"

    def _create_repo(self, body: bytes) -> None:
        self._require_auth()
        payload = json.loads(body or b"{}")
        name = payload.get("name") or ""
        namespace = payload.get("organization") or self.hub.user
        repo_type = payload.get("type") or "model"
        if repo_type not in _TYPE_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        if not _NAME_RE.match(name) or not _NAME_RE.match(namespace) or "--" in name or ".." in name:
            raise HubError(400, f"Invalid repo name {namespace}/{name}")
        repo_id = f"{namespace}/{name}"
        url = self._repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in self.hub.state.repos:
            return self._json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        visibility = payload.get("visibility")
        private = visibility in ("private", "protected") if visibility else bool(payload.get("private"))
        self.hub.state.create_repo(repo_type, repo_id, private)
        return self._json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, body: bytes) -> None:
        self._require_auth()
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload.get('name')}"
        state = self.hub.state
        state.get_repo(repo_type, repo_id, True)
        del state.repos[(repo_type, repo_id)]
        shutil.rmtree(state.root / "repos" / repo_type / repo_id, ignore_errors=True)
        return self._json({})

    def _settings(self, repo: Repo, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        if "private" in payload:
            repo.private = bool(payload["private"])
        if payload.get("visibility"):
            repo.private = payload["visibility"] != "public"
        self.hub.state.persist(repo)
        return self._json({})

    def _repo_info(self, repo: Repo, sha: str | None) -> dict:
        state = self.hub.state
        commit = repo.commits[sha] if sha else None
        tree = commit.tree if commit else {}
        readme = state.get_blob(tree["README.md"][0]) if "README.md" in tree else None
        card = _card_data(readme)
        tags = []
        if card:
            raw_tags = card.get("tags") or []
            tags.extend(str(t) for t in (raw_tags if isinstance(raw_tags, list) else [raw_tags]))
            if card.get("library_name"):
                tags.append(str(card["library_name"]))
            if card.get("license"):
                tags.append(f"license:{card['license']}")
        blobs = self._qbool("blobs")
        siblings = []
        for path in sorted(tree):
            entry = {"rfilename": path}
            if blobs:
                entry.update(size=tree[path][1], blobId=tree[path][0])
            siblings.append(entry)
        namespace = repo.repo_id.split("/")[0]
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": namespace,
            "sha": sha,
            "lastModified": commit.date if commit else repo.created_at,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(size for _, size in tree.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            if card:
                if card.get("library_name"):
                    info["library_name"] = card["library_name"]
                if card.get("pipeline_tag"):
                    info["pipeline_tag"] = card["pipeline_tag"]
        if card is not None:
            info["cardData"] = card
        if repo.repo_type == "space":
            info["sdk"] = (card or {}).get("sdk", "static")
        return info

    # -- files -----------------------------------------------------------------------------------
    @staticmethod
    def _folder_oid(tree: dict, prefix: str) -> str:
        items = sorted((p, v[0]) for p, v in tree.items() if p.startswith(prefix + "/"))
        return hashlib.sha1(json.dumps(items).encode()).hexdigest()

    def _tree_entries(self, tree: dict, path: str, recursive: bool) -> list[dict]:
        path = path.strip("/")
        prefix = path + "/" if path else ""
        if path and path in tree:
            raise HubError(404, f"{path} is a file, not a directory", "EntryNotFound")
        under = [p for p in tree if p.startswith(prefix)]
        if path and not under:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        files, folders = [], set()
        for p in under:
            rel = p[len(prefix) :].split("/")
            for i in range(1, len(rel)):
                if recursive or i == 1:
                    folders.add(prefix + "/".join(rel[:i]))
            if recursive or len(rel) == 1:
                files.append(p)
        entries = [
            {"type": "directory", "oid": self._folder_oid(tree, d), "size": 0, "path": d} for d in folders
        ]
        entries += [{"type": "file", "oid": tree[p][0], "size": tree[p][1], "path": p} for p in files]
        entries.sort(key=lambda e: e["path"])
        return entries

    def _tree(self, repo: Repo, sha: str, path: str) -> None:
        tree = repo.commits[sha].tree
        return self._json(self._tree_entries(tree, path, self._qbool("recursive")))

    def _paths_info(self, repo: Repo, sha: str, body: bytes) -> None:
        tree = repo.commits[sha].tree
        ctype = self.headers.get("Content-Type") or ""
        if "json" in ctype:
            paths = json.loads(body or b"{}").get("paths") or []
        else:
            paths = parse_qs(body.decode(), keep_blank_values=True).get("paths", [])
        out = []
        for p in paths:
            p = p.strip("/")
            if p in tree:
                out.append({"type": "file", "oid": tree[p][0], "size": tree[p][1], "path": p})
            elif any(q.startswith(p + "/") for q in tree):
                out.append({"type": "directory", "oid": self._folder_oid(tree, p), "size": 0, "path": p})
        return self._json(out)

    def _resolve_file(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        state = self.hub.state
        repo = state.get_repo(repo_type, repo_id, self._authorized())
        sha = state.resolve(repo, rev)
        tree = repo.commits[sha].tree
        if path not in tree:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        blob_sha, size = tree[path]
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{blob_sha}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        content_type = "application/octet-stream"
        if self.command == "HEAD":
            headers["Content-Length"] = str(size)
            return self._send(200, b"", headers, content_type)
        data = state.get_blob(blob_sha)
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", (self.headers.get("Range") or "").strip())
        if rng and (rng.group(1) or rng.group(2)):
            if rng.group(1):
                start = int(rng.group(1))
                end = int(rng.group(2)) if rng.group(2) else size - 1
            else:  # suffix range: last N bytes
                start, end = max(size - int(rng.group(2)), 0), size - 1
            end = min(end, size - 1)
            if start >= size or start > end:
                headers["Content-Range"] = f"bytes */{size}"
                raise HubError(416, "Requested range not satisfiable", None, headers)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return self._send(206, data[start : end + 1], headers, content_type)
        return self._send(200, data, headers, content_type)

    # -- writes ----------------------------------------------------------------------------------
    def _target_ref(self, repo: Repo, rev: str) -> tuple[str, str | int]:
        """Where a commit on ``rev`` lands: ``("branch", name)`` or ``("pr", num)``."""
        name = rev.removeprefix("refs/heads/")
        if name in repo.branches:
            return "branch", name
        m = re.fullmatch(r"refs/pr/(\d+)", rev)
        if m and int(m.group(1)) in repo.prs:
            return "pr", int(m.group(1))
        if rev in repo.tags or rev in repo.commits:
            raise HubError(400, f"Cannot commit to {rev}: not a branch")
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _preupload(self, repo: Repo, rev: str, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        sha = self.hub.state.resolve(repo, rev)
        tree = repo.commits[sha].tree
        files = []
        for f in payload.get("files") or []:
            path = f.get("path")
            remote = tree.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": remote[0] if remote else None,
                }
            )
        return self._json({"files": files, "commitOid": sha})

    def _commit(self, repo: Repo, rev: str, body: bytes) -> None:
        state = self.hub.state
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must be NDJSON starting with a 'header' line")
        header = lines[0].get("value") or {}
        title = (header.get("summary") or "").strip()
        if not title:
            raise HubError(400, "Commit summary is required")
        create_pr = self._qbool("create_pr")
        kind, ref = self._target_ref(repo, rev)
        if create_pr and kind != "branch":
            raise HubError(400, "create_pr needs a branch as base revision")
        parent = repo.branches[ref] if kind == "branch" else repo.prs[ref]
        parent_commit = header.get("parentCommit")
        if parent_commit and not parent.startswith(parent_commit):
            raise HubError(
                412,
                f"A commit has happened since. Please refresh and try again. ({parent} != {parent_commit})",
            )
        tree = dict(repo.commits[parent].tree)
        for item in lines[1:]:
            key, value = item.get("key"), item.get("value") or {}
            if key == "file":
                path = _normalize_repo_path(value.get("path") or "")
                content = value.get("content") or ""
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                tree[path] = (state.put_blob(data), len(data))
            elif key == "deletedFile":
                path = _normalize_repo_path(value.get("path") or "")
                if path not in tree:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del tree[path]
            elif key == "deletedFolder":
                prefix = _normalize_repo_path((value.get("path") or "").rstrip("/")) + "/"
                doomed = [p for p in tree if p.startswith(prefix)]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {prefix}", "EntryNotFound")
                for p in doomed:
                    del tree[p]
            elif key in ("lfsFile", "lfsFiles"):
                raise HubError(400, "The loopback hub only supports regular (non-LFS) uploads")
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = state.new_commit(repo, parent, tree, title, header.get("description") or "")
        pr_url = None
        if create_pr:
            num = self._open_pr(repo, title, header.get("description") or "", base=ref, head=commit.id)
            pr_url = f"{self._repo_url(repo.repo_type, repo.repo_id)}/discussions/{num}"
        elif kind == "branch":
            repo.branches[ref] = commit.id
        else:
            repo.prs[ref] = commit.id
        state.persist(repo)
        return self._json(
            {
                "success": True,
                "commitOid": commit.id,
                "commitUrl": f"{self._repo_url(repo.repo_type, repo.repo_id)}/commit/{commit.id}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }
        )

    def _open_pr(self, repo: Repo, title: str, description: str, base: str, head: str) -> int:
        num = max(repo.discussions, default=0) + 1
        repo.prs[num] = head
        repo.discussions[num] = {
            "title": title,
            "description": description,
            "isPullRequest": True,
            "status": "open",
            "base": base,
            "createdAt": _now_iso(),
        }
        return num

    def _create_discussion(self, repo: Repo, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        title = (payload.get("title") or "").strip() or "untitled"
        if payload.get("pullRequest"):
            num = self._open_pr(repo, title, payload.get("description") or "", "main", repo.branches["main"])
            repo.discussions[num]["status"] = "draft"
        else:
            num = max(repo.discussions, default=0) + 1
            repo.discussions[num] = {
                "title": title,
                "description": payload.get("description") or "",
                "isPullRequest": False,
                "status": "open",
                "createdAt": _now_iso(),
            }
        self.hub.state.persist(repo)
        return self._json({"num": num, "pullRequest": bool(payload.get("pullRequest"))})

    def _discussion(self, repo: Repo, num: int) -> None:
        d = repo.discussions.get(num)
        if d is None:
            raise HubError(404, f"Discussion {num} not found")
        return self._json(
            {
                "title": d["title"],
                "num": num,
                "author": {"name": self.hub.user},
                "createdAt": d["createdAt"],
                "status": d["status"],
                "repo": {"name": repo.repo_id, "type": repo.repo_type},
                "isPullRequest": d["isPullRequest"],
                "events": [],
                "changes": {"base": f"refs/heads/{d.get('base', 'main')}"},
                "filesWithConflicts": [],
                "diff": "",
            }
        )

    def _create_branch(self, repo: Repo, name: str, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        if name in repo.branches:
            raise HubError(409, f"Branch {name} already exists")
        if not re.fullmatch(r"[A-Za-z0-9._/-]{1,200}", name) or name.startswith("refs/") or ".." in name:
            raise HubError(400, f"Invalid branch name {name!r}")
        start = payload.get("startingPoint") or "main"
        repo.branches[name] = self.hub.state.resolve(repo, start)
        self.hub.state.persist(repo)
        return self._json({})

    def _delete_branch(self, repo: Repo, name: str) -> None:
        if name not in repo.branches:
            raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
        if name == "main":
            raise HubError(403, "Cannot delete the default branch")
        del repo.branches[name]
        self.hub.state.persist(repo)
        return self._json({})

    def _create_tag(self, repo: Repo, rev: str, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        tag = payload.get("tag") or ""
        if not re.fullmatch(r"[A-Za-z0-9._/-]{1,200}", tag) or ".." in tag:
            raise HubError(400, f"Invalid tag name {tag!r}")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = self.hub.state.resolve(repo, rev)
        self.hub.state.persist(repo)
        return self._json({})

    def _delete_tag(self, repo: Repo, tag: str) -> None:
        if tag not in repo.tags:
            raise HubError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
        del repo.tags[tag]
        self.hub.state.persist(repo)
        return self._json({})

    def _refs(self, repo: Repo) -> None:
        out = {
            "branches": [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                for n, s in sorted(repo.branches.items())
            ],
            "converts": [],
            "tags": [
                {"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in sorted(repo.tags.items())
            ],
        }
        if self._qbool("include_prs"):
            out["pullRequests"] = [
                {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": s}
                for n, s in sorted(repo.prs.items())
            ]
        return self._json(out)

    def _commits(self, repo: Repo, sha: str) -> None:
        return self._json(
            [
                {
                    "id": c.id,
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "authors": [{"user": c.author}],
                    "parents": c.parents,
                }
                for c in self.hub.state.history(repo, sha)
            ]
        )


class HubServer:
    """A Hub-protocol server on ``127.0.0.1:<free port>``, serving from a background thread.

    >>> server = HubServer().start()
    >>> server.endpoint  # 'http://127.0.0.1:PORT'
    >>> server.stop()

    Attributes: ``endpoint``, ``token`` (the only accepted write / private-read token), ``user`` (namespace used
    when ``create_repo`` gets no organization), ``root`` (on-disk storage), ``request_count`` and
    ``request_log`` (every request received, ``(method, raw_path)``), ``errors`` (tracebacks of internal errors:
    a non-empty list means the fake itself is broken).
    """

    def __init__(
        self, root: str | os.PathLike | None = None, token: str = DEFAULT_TOKEN, user: str = DEFAULT_USER
    ):
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="loopback-hub-"))
        self.token = token
        self.user = user
        self.state = HubState(self.root, token, user)
        self.request_count = 0
        self.request_log: collections.deque = collections.deque(maxlen=MAX_LOG_ENTRIES)
        self.errors: list[str] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def host_port(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"{host}:{port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host_port}"

    def start(self) -> HubServer:
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only, OS-chosen free port
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> HubServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- introspection helpers for tests ---------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self.state.lock:
            return self.state.repos[(repo_type, repo_id)]

    def commit_count(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> int:
        """Number of commits in the history of ``revision`` (the initial commit included)."""
        with self.state.lock:
            repo = self.state.repos[(repo_type, repo_id)]
            return len(self.state.history(repo, self.state.resolve(repo, revision)))
