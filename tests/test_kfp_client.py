"""`pipeline run` / `pipeline schedule` through the real kfp.Client against a KFP API stand-in.

A small HTTP server on 127.0.0.1 answers the KFP v2beta1 REST endpoints the client calls
(healthz, experiments, runs, recurringruns) with minimal valid JSON and records every request,
so the tests check what a real KFP server would receive.
"""

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")

IMAGE = "registry.example.com/ml/cyclegan:1.2.3"
API = "/apis/v2beta1"


class KfpApi:
    """State + request log of the stand-in server."""

    def __init__(self):
        self.requests: list[dict] = []
        self.experiments: list[dict] = []
        self.recurring_runs: list[dict] = []
        self.runs: list[dict] = []
        self.lock = threading.Lock()

    @staticmethod
    def _name_filter(query: dict) -> str | None:
        raw = query.get("filter", [""])[0]
        if not raw:
            return None
        for p in json.loads(raw).get("predicates", []):
            if p.get("key") == "display_name":
                return p.get("stringValue", p.get("string_value"))
        return None

    def handle(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        url = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        with self.lock:
            self.requests.append({"method": method, "path": url.path, "query": query, "body": body})
            route = (method, url.path)
            if route == ("GET", f"{API}/healthz"):
                return 200, {"commit_sha": "test", "tag_name": "2.5.0", "multi_user": False}
            if route == ("GET", f"{API}/experiments"):
                name = self._name_filter(query)
                found = [e for e in self.experiments if name in (None, e["display_name"])]
                return 200, {"experiments": found, "total_size": len(found)}
            if route == ("POST", f"{API}/experiments"):
                exp = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
                self.experiments.append(exp)
                return 200, exp
            if route == ("GET", f"{API}/recurringruns"):
                name, exp = self._name_filter(query), query.get("experiment_id", [None])[0]
                found = [r for r in self.recurring_runs if name in (None, r["display_name"])
                         and exp in (None, "", r["experiment_id"])]  # fmt: skip
                # the real server's JSON key (kfp_server_api's attribute_map)
                return 200, {"recurringRuns": found, "total_size": len(found)}
            if route == ("POST", f"{API}/recurringruns"):
                rec = {**body, "recurring_run_id": f"rr-{len(self.requests)}", "status": "ENABLED"}
                self.recurring_runs.append(rec)
                return 200, rec
            if method == "DELETE" and url.path.startswith(f"{API}/recurringruns/"):
                rid = url.path.rsplit("/", 1)[1]
                self.recurring_runs = [
                    r for r in self.recurring_runs if r["recurring_run_id"] != rid
                ]
                return 200, {}
            if route == ("POST", f"{API}/runs"):
                run = {**body, "run_id": f"run-{len(self.runs) + 1}", "state": "PENDING"}
                self.runs.append(run)
                return 200, run
            return 404, {"error": f"not implemented: {method} {url.path}", "code": 5}

    def posts(self, path: str) -> list[dict]:
        return [r["body"] for r in self.requests if r["method"] == "POST" and r["path"] == path]


@pytest.fixture
def kfp_server(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp
    api = KfpApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, answer = api.handle(self.command, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api.host = f"http://127.0.0.1:{server.server_port}"
    yield api
    server.shutdown()
    server.server_close()
    thread.join(5)


def cli(api: KfpApi, command: str, *args: str) -> int:
    return main(["-p", str(REPO / "params.yaml"), "-S", "train.epochs=2", command,
                 "--host", api.host, "--image", IMAGE, *args])  # fmt: skip


def executor_images(pipeline_spec: dict) -> set[str]:
    executors = pipeline_spec["pipeline_spec"]["deploymentSpec"]["executors"]
    return {e["container"]["image"] for e in executors.values()}


def test_schedule_creates_one_recurring_run_with_the_cron(kfp_server, capsys):
    api = kfp_server
    cron = "0 0 3 * * *"
    assert cli(api, "schedule", "--cron", cron, "--name", "nightly", "--experiment", "cg",
               "-S", "train.ngf=8") == 0  # fmt: skip
    (created,) = api.posts(f"{API}/recurringruns")
    assert created["display_name"] == "nightly"
    assert created["trigger"]["cron_schedule"]["cron"] == cron
    assert created["mode"] == "ENABLE"
    assert created["experiment_id"] == "exp-1"
    assert api.posts(f"{API}/experiments") == [{"display_name": "cg", "namespace": ""}]
    assert int(created["max_concurrency"]) == 1 and created["no_catchup"] is True
    params = created["runtime_config"]["parameters"]
    assert params["overrides"] == ["train.epochs=2", "train.ngf=8"]
    assert json.loads(params["params_yaml"])["register"]["model_name"]
    assert executor_images(created["pipeline_spec"]) == {IMAGE}
    assert "kubernetes" in created["pipeline_spec"]["platform_spec"]["platforms"]
    assert "created" in capsys.readouterr().out

    # the same name again: found by name, nothing new created
    assert cli(api, "schedule", "--cron", "0 30 4 * * *", "--name", "nightly",
               "--experiment", "cg") == 0  # fmt: skip
    assert len(api.posts(f"{API}/recurringruns")) == 1
    assert len(api.recurring_runs) == 1
    assert len(api.experiments) == 1  # the experiment is reused too
    assert "exists already" in capsys.readouterr().out
    lookups = [
        r for r in api.requests if r["method"] == "GET" and r["path"] == f"{API}/recurringruns"
    ]
    assert len(lookups) == 2 and lookups[-1]["query"]["experiment_id"] == ["exp-1"]

    # another name is another schedule; --replace recreates in place
    assert cli(api, "schedule", "--cron", cron, "--name", "weekly", "--experiment", "cg") == 0
    assert cli(api, "schedule", "--cron", "0 0 5 * * *", "--name", "nightly",
               "--experiment", "cg", "--replace") == 0  # fmt: skip
    assert sorted(r["display_name"] for r in api.recurring_runs) == ["nightly", "weekly"]
    nightly = next(r for r in api.recurring_runs if r["display_name"] == "nightly")
    assert nightly["trigger"]["cron_schedule"]["cron"] == "0 0 5 * * *"
    assert any(r["method"] == "DELETE" for r in api.requests)


def test_run_submits_one_run_with_the_overrides(kfp_server, capsys):
    api = kfp_server
    assert cli(api, "run", "--experiment", "adhoc", "-S", "train.lr=0.001",
               "--photo-dir", "s3://bucket/photo_jpg", "--max-fid-ratio", "0.9") == 0  # fmt: skip
    (run,) = api.posts(f"{API}/runs")
    assert run["experiment_id"] == "exp-1"
    assert run["display_name"].startswith("cyclegan-photo2monet ")
    params = run["runtime_config"]["parameters"]
    assert params["overrides"] == ["train.epochs=2", "train.lr=0.001"]
    assert params["photo_dir"] == "s3://bucket/photo_jpg"
    assert params["max_fid_ratio"] == 0.9
    assert executor_images(run["pipeline_spec"]) == {IMAGE}
    assert "run-1 submitted" in capsys.readouterr().out
    assert [r["path"] for r in api.requests][0] == f"{API}/healthz"


def test_run_without_a_host_says_so(monkeypatch, capsys):
    monkeypatch.delenv("KFP_HOST", raising=False)
    assert main(["-p", str(REPO / "params.yaml"), "run", "--image", IMAGE]) == 1
    assert "--host" in capsys.readouterr().err
