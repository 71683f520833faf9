"""A FAKE of the Hugging Face Hub's HTTP API, for tests only: we do not ship the Hub, so we do not test against it.

``FakeHub()`` serves, on a free loopback port, the few endpoints ``huggingface_hub`` (2.x) calls to create a repository
and commit files to it: ``POST /api/repos/create``, ``POST /api/validate-yaml`` (the README's front matter must be a
YAML mapping), ``POST /api/{type}s/{repo}/preupload/{rev}`` (every file is answered ``"regular"``, so the content
travels base64 in the commit: no LFS, no Xet) and ``POST /api/{type}s/{repo}/commit/{rev}`` (NDJSON). It keeps each
repository's visibility and files and every request it saw (method, path, the bearer token), and answers anything else
404. Point ``huggingface_hub`` at it with ``HF_ENDPOINT=hub.url`` (read when the library is imported: set it in a
subprocess's environment).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: int = 0


@dataclass
class Seen:
    method: str
    path: str
    token: str | None


class FakeHub:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[Seen] = []
        self.validated: list[dict | None] = []  # README front matters checked (POST /api/validate-yaml)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code: int, body: dict, headers: dict | None = None):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _seen(self):
                auth = self.headers.get("Authorization") or ""
                hub.requests.append(Seen(self.command, self.path, auth.removeprefix("Bearer ") or None))

            def do_GET(self):  # noqa: N802
                self._seen()
                self._send(404, {"error": "not found (fake hub)"}, {"X-Error-Code": "RepoNotFound"})

            do_HEAD = do_GET  # noqa: N815

            def do_POST(self):  # noqa: N802
                self._seen()
                body = self._body()
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    private = req.get("visibility") == "private" or bool(req.get("private"))
                    if repo in hub.repos:
                        return self._send(409, {"error": "You already created this model repo",
                                                "url": f"{hub.url}/{repo}"})
                    hub.repos[repo] = Repo(private=private)
                    return self._send(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":  # the README's front matter (the real Hub checks it against a schema)
                    import yaml

                    content = json.loads(body).get("content", "")
                    try:
                        meta = yaml.safe_load(content.split("---", 2)[1]) if content.startswith("---") else None
                    except yaml.YAMLError:
                        meta = None
                    hub.validated.append(meta)
                    if not isinstance(meta, dict):
                        return self._send(400, {"errors": [{"message": "no YAML metadata block"}]})
                    return self._send(200, {"errors": [], "warnings": []})
                parts = path.split("/")  # ['', 'api', 'models', org, name, 'preupload'|'commit', rev]
                if len(parts) >= 7 and parts[1] == "api" and parts[5] in ("preupload", "commit"):
                    repo = f"{parts[3]}/{parts[4]}"
                    if repo not in hub.repos:
                        return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    if parts[5] == "preupload":
                        files = json.loads(body)["files"]
                        return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                           "shouldIgnore": False, "oid": None} for f in files]})
                    r = hub.repos[repo]
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            v = item["value"]
                            r.files[v["path"]] = base64.b64decode(v["content"])
                    r.commits += 1
                    oid = hashlib.sha1(f"{repo}{r.commits}".encode()).hexdigest()
                    return self._send(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid,
                                            "success": True})
                self._send(404, {"error": "not found (fake hub)"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
