"""Ingest sources: folders, Kaggle TFRecords (their exact layout), zips (incl. path traversal),
and s3:// prefixes on a real S3 API server on 127.0.0.1 (moto's standalone server) behind a
small HTTP proxy that injects transient 5xx / throttling errors, which botocore must retry.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cyclegan.data.ingest import IngestError, S3Options, escapes, ingest
from tests.conftest import delete_bucket

FAKE_KEY, FAKE_SECRET = "testing-key", "testing-secret"  # moto accepts any credentials
BUCKET = "datasets"


def jpeg_bytes(seed: int, size=(40, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_kaggle_tfrec(path: Path, images: dict[str, bytes], target: str) -> Path:
    """A TFRecord file exactly as Kaggle's gan-getting-started ships them."""
    import tensorflow as tf

    def feature(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for name, data in images.items():
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image_name": feature(name.encode()),
                        "image": feature(data),
                        "target": feature(target.encode()),
                    }  # fmt: skip
                )
            )
            writer.write(example.SerializeToString())
    return path


def staged_bytes(items) -> dict[str, bytes]:
    return {it.name: Path(it.path).read_bytes() for it in items if it.path is not None}


# --- local folders and Kaggle layouts ------------------------------------------------------


def test_kaggle_tfrecords_in_their_exact_layout_become_staged_images(tmp_path):
    monet = {f"m{i:03d}abc": jpeg_bytes(i) for i in range(4)}
    photo = {f"p{i:03d}def": jpeg_bytes(100 + i) for i in range(3)}
    root = tmp_path / "kaggle"
    write_kaggle_tfrec(root / "monet_tfrec" / "monet00-4.tfrec", monet, "monet")
    write_kaggle_tfrec(root / "photo_tfrec" / "photo00-3.tfrec", photo, "photo")
    staging = tmp_path / "out" / "staging"

    items = ingest({"photo": root, "monet": root}, staging)

    by_domain = {d: [it for it in items if it.domain == d] for d in ("photo", "monet")}
    assert staged_bytes(by_domain["monet"]) == monet  # the records' exact JPEG bytes
    assert staged_bytes(by_domain["photo"]) == photo
    first = by_domain["monet"][0]
    assert first.staged and first.source.endswith("monet_tfrec/monet00-4.tfrec#0")
    # content-addressed staging inside the output, nothing beside the source
    assert (
        Path(first.path) == staging / sha(monet[first.name])[:2] / f"{sha(monet[first.name])}.jpg"
    )
    assert sorted(p.name for p in root.rglob("*")) == sorted(
        ["monet_tfrec", "photo_tfrec", "monet00-4.tfrec", "photo00-3.tfrec"]
    )
    # a folder of .tfrec files, or one .tfrec file, given directly works too
    direct = ingest({"monet": root / "monet_tfrec"}, tmp_path / "s2")
    assert staged_bytes(direct) == monet
    one = ingest({"photo": root / "photo_tfrec" / "photo00-3.tfrec"}, tmp_path / "s3")
    assert staged_bytes(one) == photo


def test_truncated_tfrecord_is_reported_not_fatal(tmp_path):
    path = write_kaggle_tfrec(tmp_path / "monet_tfrec" / "monet00-2.tfrec",
                              {"a": jpeg_bytes(1), "b": jpeg_bytes(2)}, "monet")  # fmt: skip
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 50])
    items = ingest({"monet": tmp_path}, tmp_path / "staging")
    assert [it.name for it in items if it.path] == ["a"]
    (bad,) = [it for it in items if it.issue]
    assert bad.issue == "corrupt_tfrecord" and "after 1 records" in bad.error


def test_local_folder_is_read_in_place_nested_with_kaggle_subfolder_autodetect(tmp_path):
    root = tmp_path / "kaggle"
    (root / "photo_jpg" / "sub").mkdir(parents=True)
    (root / "monet_jpg").mkdir()
    (root / "photo_jpg" / "a.jpg").write_bytes(jpeg_bytes(1))
    (root / "photo_jpg" / "sub" / "b.JPEG").write_bytes(jpeg_bytes(2))
    (root / "photo_jpg" / "notes.txt").write_text("ignored: not an image extension")
    (root / "monet_jpg" / "c.png").write_bytes(jpeg_bytes(3))
    items = ingest({"photo": root, "monet": root}, tmp_path / "staging")
    assert [(it.domain, Path(it.path).relative_to(root).as_posix(), it.staged) for it in items] == [
        ("photo", "photo_jpg/a.jpg", False),
        ("photo", "photo_jpg/sub/b.JPEG", False),
        ("monet", "monet_jpg/c.png", False),
    ]


def test_missing_or_wrong_source_is_a_clear_error(tmp_path):
    with pytest.raises(IngestError, match=r"'.*nowhere' does not exist .*data.photo_dir"):
        ingest({"photo": tmp_path / "nowhere"}, tmp_path / "staging")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(IngestError, match=r"not a folder, a .zip or .tfrec file, or an s3://"):
        ingest({"photo": tmp_path / "file.txt"}, tmp_path / "staging")
    (tmp_path / "monet_jpg").mkdir()
    (tmp_path / "monet_jpg" / "m.jpg").write_bytes(jpeg_bytes(1))
    with pytest.raises(IngestError, match="has monet_jpg/ but no photo_jpg/ or photo_tfrec/"):
        ingest({"photo": tmp_path}, tmp_path / "staging")  # never mix the other domain in


# --- zips -----------------------------------------------------------------------------------


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps '../' and '/' verbatim
    return path


def test_kaggle_zip_picks_each_domains_folder(tmp_path):
    entries = {f"gan-getting-started/monet_jpg/m{i}.jpg": jpeg_bytes(i) for i in range(3)}
    entries |= {f"gan-getting-started/photo_jpg/p{i}.jpg": jpeg_bytes(10 + i) for i in range(2)}
    entries["gan-getting-started/README.txt"] = b"not an image"
    archive = make_zip(tmp_path / "gan-getting-started.zip", entries)
    before = sha(archive.read_bytes())

    items = ingest({"photo": archive, "monet": archive}, tmp_path / "staging")

    assert [(it.domain, it.name) for it in items] == [
        ("photo", "p0.jpg"), ("photo", "p1.jpg"), ("monet", "m0.jpg"), ("monet", "m1.jpg"),
        ("monet", "m2.jpg"),
    ]  # fmt: skip
    assert items[0].source == f"{archive}!gan-getting-started/photo_jpg/p0.jpg"
    assert Path(items[0].path).read_bytes() == entries["gan-getting-started/photo_jpg/p0.jpg"]
    assert sha(archive.read_bytes()) == before


def test_kaggle_zip_of_tfrecords(tmp_path):
    import tensorflow as tf  # noqa: F401  (write_kaggle_tfrec)

    monet = {"m1": jpeg_bytes(1), "m2": jpeg_bytes(2)}
    tfrec = write_kaggle_tfrec(tmp_path / "monet00-2.tfrec", monet, "monet")
    archive = make_zip(tmp_path / "k.zip", {"monet_tfrec/monet00-2.tfrec": tfrec.read_bytes(),
                                            "photo_jpg/p.jpg": jpeg_bytes(5)})  # fmt: skip
    items = ingest({"monet": archive}, tmp_path / "staging")
    assert staged_bytes(items) == monet
    assert items[0].source == f"{archive}!monet_tfrec/monet00-2.tfrec#0"
    assert not list((tmp_path / "staging").glob(".incoming/*"))  # temp extraction cleaned


def test_zip_path_traversal_entries_are_refused_by_name_and_never_written(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    archive = make_zip(work / "evil.zip", {
        "monet_jpg/ok.jpg": jpeg_bytes(1),
        "../escaped.jpg": jpeg_bytes(2),
        "monet_jpg/../../deep.jpg": jpeg_bytes(3),
        "/abs/rooted.jpg": jpeg_bytes(4),
        "C:\\windows\\drive.jpg": jpeg_bytes(5),
    })  # fmt: skip
    staging = work / "out" / "staging"
    items = ingest({"monet": archive}, staging)

    refused = {it.source.split("!", 1)[1]: it for it in items if it.issue == "path_traversal"}
    assert set(refused) == {"../escaped.jpg", "monet_jpg/../../deep.jpg", "/abs/rooted.jpg",
                            "C:\\windows\\drive.jpg"}  # fmt: skip
    assert all(it.path is None for it in refused.values())
    assert "zip entry '../escaped.jpg' would be written outside" in refused["../escaped.jpg"].error
    assert [it.name for it in items if it.path] == ["ok.jpg"]
    for name in ("escaped.jpg", "deep.jpg", "rooted.jpg", "drive.jpg"):
        assert not list(tmp_path.rglob(name)), name
    assert [escapes(n) for n in ("a/b.jpg", "a/../b.jpg", "..\\x.jpg", "/x", "d:x")] == [
        False, True, True, True, True,
    ]  # fmt: skip


def test_zip_without_the_domains_folder_says_so(tmp_path):
    archive = make_zip(tmp_path / "k.zip", {"monet_jpg/m.jpg": jpeg_bytes(1)})
    with pytest.raises(IngestError, match="has monet_jpg/ but no photo_jpg/ or photo_tfrec/"):
        ingest({"photo": archive}, tmp_path / "staging")


# --- S3 on a real S3 API server, with injected transient errors ---------------------------------


ERRORS = {  # injected answers: (HTTP status, S3 error code); None = drop the connection
    "503": (503, "ServiceUnavailable"),
    "500": (500, "InternalError"),
    "slowdown": (503, "SlowDown"),  # S3's throttling answer
    "drop": None,
}


class FlakyProxy:
    """An HTTP proxy in front of the S3 server. `plan(request, attempt)` says what the
    `attempt`-th (1-based) try of a request ("GET /bucket/key?query") gets: None = forwarded to
    the server, else a key of ERRORS (an S3 error response, or a dropped connection)."""

    def __init__(self, upstream: tuple[str, int], plan=lambda key, n: None):
        self.upstream, self.plan = upstream, plan
        self.attempts: dict[str, int] = {}
        self.failed: list[tuple[str, str]] = []
        self.forwarded: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = f"{self.command} {self.path}"
                with proxy.lock:
                    n = proxy.attempts[key] = proxy.attempts.get(key, 0) + 1
                    action = proxy.plan(key, n)
                    if action:
                        proxy.failed.append((key, action))
                    else:
                        proxy.forwarded.append(key)
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if action:
                    status, code = ERRORS[action]
                    payload = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}"
                               f"</Code><Message>injected</Message></Error>").encode()  # fmt: skip
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def moto_endpoint(moto_server):
    return moto_server


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    for name, value in {"AWS_ACCESS_KEY_ID": FAKE_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
                        "AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1,localhost",
                        "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "HTTP_PROXY",
                 "HTTPS_PROXY", "http_proxy", "https_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def bucket(moto_endpoint, aws_env):
    """A fresh bucket on the moto server, filled through a direct (un-proxied) client."""
    import boto3

    host, port = moto_endpoint
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    client.create_bucket(Bucket=BUCKET)
    yield client
    delete_bucket(client, BUCKET)


@pytest.fixture
def flaky(moto_endpoint, monkeypatch):
    proxies = []

    def make(plan=lambda key, n: None) -> FlakyProxy:
        proxy = FlakyProxy(moto_endpoint, plan)
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def put_images(client, prefix: str, images: dict[str, bytes]) -> None:
    for rel, data in images.items():
        client.put_object(Bucket=BUCKET, Key=f"{prefix}{rel}", Body=data)


def test_s3_prefix_with_transient_errors_retried(bucket, flaky, tmp_path):
    photos = {"a.jpg": jpeg_bytes(1), "nested/b.png": jpeg_bytes(2), "c.jpeg": jpeg_bytes(3)}
    put_images(bucket, "data/photos/", photos)
    put_images(bucket, "data/photos2/", {"other.jpg": jpeg_bytes(9)})  # a sibling prefix
    bucket.put_object(Bucket=BUCKET, Key="data/photos/notes.txt", Body=b"skip me")
    monet = {"m1": jpeg_bytes(11), "m2": jpeg_bytes(12)}
    tfrec = write_kaggle_tfrec(tmp_path / "monet00-2.tfrec", monet, "monet")
    bucket.put_object(
        Bucket=BUCKET, Key="kaggle/monet_tfrec/monet00-2.tfrec", Body=tfrec.read_bytes()
    )

    def plan(key, n):
        if "list-type=2" in key and "photos" in key and n <= 2:
            return "503"  # the listing: two 503s, then success
        if key.startswith("GET /datasets/data/photos/c.jpeg") and n == 1:
            return "500"
        if key.startswith("GET /datasets/kaggle/monet_tfrec/") and n == 1:
            return "drop"  # connection closed without an answer
        return None

    proxy = flaky(plan)
    items = ingest({"photo": f"s3://{BUCKET}/data/photos", "monet": f"s3://{BUCKET}/kaggle"},
                   tmp_path / "staging", s3=S3Options("standard", 4, workers=2))  # fmt: skip

    got = {it.source: Path(it.path).read_bytes() for it in items if it.domain == "photo"}
    assert got == {f"s3://{BUCKET}/data/photos/{k}": v for k, v in sorted(photos.items())}
    assert staged_bytes([it for it in items if it.domain == "monet"]) == monet
    assert sorted(action for _, action in proxy.failed) == ["500", "503", "503", "drop"]
    retried = {key for key, _ in proxy.failed}
    assert retried <= set(proxy.forwarded)  # each failed request was retried to success
    assert len(proxy.forwarded) == 2 + 4  # 2 listings, 4 downloads


def test_s3_throttling_is_retried_and_exhausted_retries_fail_clearly(bucket, flaky, tmp_path):
    put_images(bucket, "p/", {"a.jpg": jpeg_bytes(1)})
    proxy = flaky(lambda key, n: "slowdown" if n == 1 else None)
    items = ingest({"photo": f"s3://{BUCKET}/p/"}, tmp_path / "s1", s3=S3Options("adaptive", 3))
    assert len(items) == 1 and len(proxy.failed) == 2 and len(proxy.forwarded) == 2

    proxy = flaky(lambda key, n: "500")
    with pytest.raises(
        IngestError, match=rf"cannot list 's3://{BUCKET}/p/'.*after up to 2 attempts"
    ):
        ingest({"photo": f"s3://{BUCKET}/p/"}, tmp_path / "s2", s3=S3Options("standard", 2))
    assert len(proxy.failed) == 2 and not proxy.forwarded  # max_attempts counts the first try


def test_s3_rerun_reuses_unchanged_objects_and_s3_zip(bucket, flaky, tmp_path):
    put_images(bucket, "p/", {"a.jpg": jpeg_bytes(1), "b.jpg": jpeg_bytes(2)})
    entries = {"monet_jpg/m.jpg": jpeg_bytes(3), "../evil.jpg": jpeg_bytes(4)}
    make_zip(tmp_path / "k.zip", entries)
    bucket.put_object(Bucket=BUCKET, Key="k.zip", Body=(tmp_path / "k.zip").read_bytes())
    proxy = flaky()
    first = ingest({"photo": f"s3://{BUCKET}/p", "monet": f"s3://{BUCKET}/k.zip"},
                   tmp_path / "run1" / "staging")  # fmt: skip
    assert [(it.domain, it.name, it.issue) for it in first] == [
        ("photo", "a.jpg", None), ("photo", "b.jpg", None),
        ("monet", "evil.jpg", "path_traversal"), ("monet", "m.jpg", None),
    ]  # fmt: skip
    assert first[2].source == f"s3://{BUCKET}/k.zip!../evil.jpg"
    n_gets = sum(k.startswith("GET /datasets/p/") for k in proxy.forwarded)
    assert n_gets == 2

    bucket.put_object(Bucket=BUCKET, Key="p/b.jpg", Body=jpeg_bytes(5))  # changed object
    second = ingest({"photo": f"s3://{BUCKET}/p"}, tmp_path / "run2" / "staging",
                    reuse_from=tmp_path / "run1" / "staging")  # fmt: skip
    assert staged_bytes(second) == {"a.jpg": jpeg_bytes(1), "b.jpg": jpeg_bytes(5)}
    gets = [k for k in proxy.forwarded if k.startswith("GET /datasets/p/")]
    assert len(gets) == 3 and gets[-1].startswith("GET /datasets/p/b.jpg")  # a.jpg reused


def test_validate_and_preprocess_read_s3_and_kaggle_tfrecords(bucket, flaky, tmp_path, tiny_config):
    """The steps end to end on non-local sources: everything is staged under the validate
    output, preprocess reads only that, and a rerun does not download unchanged objects."""
    from cyclegan.steps import preprocess, validate
    from cyclegan.storage import read_manifest

    put_images(bucket, "photos/", {f"p{i}.jpg": jpeg_bytes(i) for i in range(6)})
    monet = {f"m{i}": jpeg_bytes(50 + i) for i in range(5)}
    write_kaggle_tfrec(tmp_path / "kaggle" / "monet_tfrec" / "monet00-5.tfrec", monet, "monet")
    proxy = flaky(lambda key, n: "503" if n == 1 and "list-type" in key else None)
    cfg = tiny_config()
    out = tmp_path / "validate"

    result = validate.run(cfg, f"s3://{BUCKET}/photos", tmp_path / "kaggle", out, progress=False)
    assert result.passed, result.message()
    assert proxy.failed  # the listing was retried
    images = read_manifest(out, "validate")["images"]
    assert len(images) == 11 and all(im["staged"] for im in images)
    assert all((out / im["path"]).is_file() and im["path"].startswith("staging/") for im in images)
    assert {im["source"] for im in images if im["domain"] == "photo"} == {
        f"s3://{BUCKET}/photos/p{i}.jpg" for i in range(6)
    }
    data = preprocess.run(cfg, out, tmp_path / "data", progress=False)
    assert sum(sum(c.values()) for c in data.counts.values()) == 11

    gets = sum(k.startswith("GET /datasets/photos/") for k in proxy.forwarded)
    validate.run(cfg, f"s3://{BUCKET}/photos", tmp_path / "kaggle", out, progress=False)
    assert sum(k.startswith("GET /datasets/photos/") for k in proxy.forwarded) == gets
    assert len(read_manifest(out, "validate")["images"]) == 11
