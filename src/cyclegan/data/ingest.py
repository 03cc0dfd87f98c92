"""Ingest: turn a data source into a list of local image files to validate.

A source (the value of `data.photo_dir` / `data.monet_dir`) is one of

- a local folder of jpg/jpeg/png files (nested folders allowed), read in place;
- a Kaggle gan-getting-started folder or zip: `{domain}_jpg/` is used if present, else
  `{domain}_tfrec/` (TFRecords with `image_name` / `image` / `target`; each record's JPEG bytes
  become one image); a folder or zip of `*.tfrec` / `*.tfrecord` files works the same way;
- `s3://bucket/prefix` (or `s3://bucket/archive.zip`), read with boto3: endpoint from
  `AWS_ENDPOINT_URL`, botocore retries with backoff on 5xx / throttling / connection errors.

Everything that is not a plain local file (zip entries, TFRecord records, S3 objects) is
materialised into a content-addressed staging folder (`<sha256[:2]>/<sha256><ext>`) inside the
validate output, so the later steps only ever read local files. Sources are never modified.

Zip entries that would escape the extraction folder (`../x.jpg`, `/etc/x.jpg`, `C:\\x.jpg`) are
refused: they become rejected items with the issue `path_traversal`, naming the entry, and
nothing is written for them. Local files that cannot be read (broken links, FIFOs, no
permission) are listed too, never skipped silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from cyclegan.data.images import DOMAINS, IMAGE_EXTENSIONS
from cyclegan.storage import (
    download_s3_object,
    is_s3_uri,
    iter_s3_objects,
    parse_s3_uri,
    s3_client,
    write_json,
)

TFRECORD_EXTENSIONS = {".tfrec", ".tfrecord"}
MAX_ENTRY_BYTES = 1 << 30  # a zip entry declaring more than this is refused (zip bomb)
INDEX = "index.json"  # staging/index.json: S3 object (uri, etag, size) -> staged file


class IngestError(RuntimeError):
    """A data source cannot be used at all (missing, wrong kind, unreachable)."""


@dataclasses.dataclass
class Item:
    """One input image: where it came from and the local file to read (if any)."""

    domain: str
    source: str  # what the user knows: a path, `archive.zip!entry`, `file.tfrec#3`, `s3://...`
    name: str  # file name (or Kaggle image_name), written as the TFRecord `image_name`
    path: Path | None = None  # the local file to read: the original or a staged copy
    staged: bool = False
    issue: str | None = None  # set when the item is refused before reading (see images.ISSUES)
    error: str | None = None


@dataclasses.dataclass
class S3Options:
    retry_mode: str = "standard"
    max_attempts: int = 5
    workers: int = 4


def _kind_of_name(name: str) -> str | None:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in TFRECORD_EXTENSIONS:
        return "tfrecord"
    return None


def _ext_for(data_head: bytes, name: str) -> str:
    if data_head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data_head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) else ".bin"


class Staging:
    """Content-addressed local copies: `<root>/<sha[:2]>/<sha><ext>`; identical bytes, one file."""

    def __init__(self, root: Path, reuse_from: Path | None = None):
        self.root = Path(root)
        self.incoming = self.root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.reuse_from = Path(reuse_from) if reuse_from else None
        self.index: dict[str, dict] = {}
        self._previous = {}
        if self.reuse_from and (self.reuse_from / INDEX).is_file():
            try:
                self._previous = json.loads((self.reuse_from / INDEX).read_text())
            except (OSError, ValueError):
                self._previous = {}
        self._n = 0

    def _final(self, sha: str, ext: str) -> Path:
        return self.root / sha[:2] / f"{sha}{ext}"

    def _settle(self, tmp: Path, sha: str, ext: str) -> Path:
        final = self._final(sha, ext)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            tmp.unlink()
        else:
            os.replace(tmp, final)
        return final

    def _tmp(self) -> Path:
        self._n += 1
        return self.incoming / f"{os.getpid()}-{self._n}-{os.urandom(4).hex()}"

    def put_bytes(self, data: bytes, name: str) -> Path:
        sha = hashlib.sha256(data).hexdigest()
        final = self._final(sha, _ext_for(data[:8], name))
        if not final.exists():
            tmp = self._tmp()
            tmp.write_bytes(data)
            self._settle(tmp, sha, final.suffix)
        return final

    def put_stream(self, fh, name: str, chunk: int = 1 << 20) -> Path:
        tmp = self._tmp()
        digest = hashlib.sha256()
        head = b""
        with open(tmp, "wb") as out:
            while block := fh.read(chunk):
                if len(head) < 8:
                    head += block[:8]
                digest.update(block)
                out.write(block)
        return self._settle(tmp, digest.hexdigest(), _ext_for(head, name))

    def put_file(self, path: Path, name: str) -> Path:
        with open(path, "rb") as fh:
            return self.put_stream(fh, name)

    def reuse(self, key: str, etag: str, size: int) -> Path | None:
        """A file staged by the previous validate run for the same S3 object version."""
        prev = self._previous.get(key)
        if not prev or prev.get("etag") != etag or prev.get("size") != size or not self.reuse_from:
            return None
        old = self.reuse_from / prev["file"]
        if not old.is_file() or old.stat().st_size != size:
            return None
        new = self.root / prev["file"]
        new.parent.mkdir(parents=True, exist_ok=True)
        if not new.exists():
            try:
                os.link(old, new)
            except OSError:
                shutil.copy2(old, new)
        return new

    def remember(self, key: str, etag: str, size: int, path: Path) -> None:
        self.index[key] = {"etag": etag, "size": size, "file": str(path.relative_to(self.root))}

    def close(self) -> None:
        shutil.rmtree(self.incoming, ignore_errors=True)
        if self.index:
            write_json(self.root / INDEX, self.index)


# --- selecting a domain inside a Kaggle-style layout ---------------------------------------


def _select(names: list[str], domain: str, where: str) -> list[str]:
    """Entries of `domain` in a listing of relative names (zip entries, S3 keys, ...).

    `{domain}_jpg/` wins, then `{domain}_tfrec/`; a listing with neither (and no other domain's
    folder) is used whole."""
    for kind in ("jpg", "tfrec"):
        folder = f"{domain}_{kind}"
        chosen = [n for n in names if folder in PurePosixPath(n).parts[:-1]]
        if chosen:
            return chosen
    others = {f"{d}_{k}" for d in DOMAINS if d != domain for k in ("jpg", "tfrec")}
    present = sorted({p for n in names for p in PurePosixPath(n).parts[:-1] if p in others})
    if present:
        raise IngestError(
            f"{where} has {', '.join(f'{p}/' for p in present)} but no {domain}_jpg/ or "
            f"{domain}_tfrec/ folder for the {domain} domain"
        )
    return names


def escapes(name: str) -> bool:
    """Would extracting this zip entry name write outside the target folder?"""
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        return True
    return ".." in PurePosixPath(n).parts


# --- TFRecords (Kaggle's image_name / image / target) ------------------------------------


def tfrecord_items(file: Path, label: str, domain: str, staging: Staging) -> Iterator[Item]:
    """One item per record of a TFRecord file; the record's JPEG bytes are staged."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    stem = PurePosixPath(label).stem
    index = -1
    try:
        for index, record in enumerate(tf.data.TFRecordDataset(str(file)).as_numpy_iterator()):
            source = f"{label}#{index}"
            try:
                feature = tf.train.Example.FromString(record).features.feature
            except DecodeError as exc:
                yield Item(domain, source, f"{stem}-{index}", issue="bad_record",
                           error=f"TFRecord record is not a tf.train.Example ({exc})")  # fmt: skip
                continue
            names = feature["image_name"].bytes_list.value if "image_name" in feature else []
            name = names[0].decode("utf-8", "replace") if names else f"{stem}-{index}"
            images = feature["image"].bytes_list.value if "image" in feature else []
            if not images:
                yield Item(domain, source, name, issue="bad_record",
                           error="TFRecord record has no bytes in its 'image' feature "
                                 "(expected Kaggle's image_name/image/target)")  # fmt: skip
                continue
            path = staging.put_bytes(images[0], name)
            yield Item(domain, source, name, path=path, staged=True)
    except (tf.errors.DataLossError, tf.errors.OpError) as exc:
        yield Item(domain, f"{label}#{index + 1}", f"{stem}-{index + 1}", issue="corrupt_tfrecord",
                   error=f"TFRecord file is damaged or truncated after {index + 1} records "
                         f"({exc.message.splitlines()[0]})")  # fmt: skip


# --- local folders ------------------------------------------------------------------------


def _walk(root: Path) -> Iterator[Path]:
    """Every non-directory entry under root, sorted, without following directory symlinks."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames):
            yield base / name
        for name in dirnames:  # a symlink to a folder is listed (and not followed) here
            if (base / name).is_symlink() and _kind_of_name(name):
                yield base / name


def folder_items(root: Path, domain: str, staging: Staging) -> Iterator[Item]:
    """Images (read in place) and TFRecords (staged) under a folder, Kaggle layout aware."""
    entries = {p.relative_to(root).as_posix(): p for p in _walk(root) if _kind_of_name(p.name)}
    for rel in _select(sorted(entries), domain, f"folder '{root}'"):
        path = entries[rel]
        if _kind_of_name(path.name) == "tfrecord" and path.is_file():
            yield from tfrecord_items(path, str(path), domain, staging)
        else:  # an image, or something unreadable with an image/TFRecord name (reported)
            yield Item(domain, str(path), path.name, path=path)


# --- zips ---------------------------------------------------------------------------------


def zip_items(archive: Path, domain: str, staging: Staging, label: str | None = None,
              refused_seen: set | None = None) -> Iterator[Item]:  # fmt: skip
    """Items of one domain in a zip, staged; escaping entries refused (never extracted)."""
    label = label or str(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise IngestError(f"'{label}' is not a readable zip file ({exc})") from exc
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        seen = refused_seen if refused_seen is not None else set()
        for info in infos:
            if escapes(info.filename) and (label, info.filename) not in seen:
                seen.add((label, info.filename))
                yield Item(domain, f"{label}!{info.filename}", PurePosixPath(info.filename).name,
                           issue="path_traversal",
                           error=f"zip entry '{info.filename}' would be written outside the "
                                 f"extraction folder (path traversal): refused, not extracted")  # fmt: skip
        safe = {
            i.filename: i for i in infos if not escapes(i.filename) and _kind_of_name(i.filename)
        }
        for entry in sorted(_select(sorted(safe), domain, f"zip '{label}'")):
            info = safe[entry]
            source = f"{label}!{entry}"
            name = PurePosixPath(entry).name
            if info.file_size > MAX_ENTRY_BYTES:
                yield Item(domain, source, name, issue="too_large",
                           error=f"zip entry declares {info.file_size} bytes, over the "
                                 f"{MAX_ENTRY_BYTES}-byte limit (zip bomb?): not extracted")  # fmt: skip
                continue
            try:
                with zf.open(info) as fh:
                    if _kind_of_name(entry) == "image":
                        yield Item(
                            domain, source, name, path=staging.put_stream(fh, name), staged=True
                        )
                        continue
                    tmp = staging._tmp()
                    with open(tmp, "wb") as out:
                        shutil.copyfileobj(fh, out, 1 << 20)
            except (zipfile.BadZipFile, RuntimeError, OSError, EOFError) as exc:
                yield Item(domain, source, name, issue="unreadable",
                           error=f"cannot read zip entry ({exc})")  # fmt: skip
                continue
            try:
                yield from tfrecord_items(tmp, source, domain, staging)
            finally:
                tmp.unlink(missing_ok=True)


# --- S3 -----------------------------------------------------------------------------------


def _boto_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def s3_items(uri: str, domain: str, staging: Staging, opts: S3Options,
             refused_seen: set | None = None, progress: bool = False) -> Iterator[Item]:  # fmt: skip
    """Items under an s3:// prefix (or in an s3:// zip), downloaded into staging in parallel."""
    import concurrent.futures as cf

    errors = _boto_errors()
    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(opts.retry_mode, opts.max_attempts)
    hint = (f"after up to {opts.max_attempts} attempts per request; check AWS_ENDPOINT_URL, "
            f"the credentials and the bucket")  # fmt: skip
    if prefix.lower().endswith(".zip"):
        local = staging.incoming / "archive.zip"
        try:
            download_s3_object(client, bucket, prefix, local)
        except errors as exc:
            raise IngestError(f"cannot download '{uri}' ({exc}) {hint}") from exc
        try:
            yield from zip_items(local, domain, staging, label=uri, refused_seen=refused_seen)
        finally:
            local.unlink(missing_ok=True)
        return
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    try:
        objects = {o["Key"][len(prefix) :]: o for o in iter_s3_objects(client, bucket, prefix)}
    except errors as exc:
        raise IngestError(f"cannot list '{uri}' ({exc}) {hint}") from exc
    wanted = [k for k in sorted(objects) if _kind_of_name(k) and not k.endswith("/")]
    wanted = _select(wanted, domain, f"'{uri}'")

    def fetch(rel: str) -> Path:
        obj = objects[rel]
        key, etag, size = f"s3://{bucket}/{obj['Key']}", obj.get("ETag", ""), obj.get("Size", -1)
        path = staging.reuse(key, etag, size)
        if path is None:
            tmp = staging._tmp()
            download_s3_object(client, bucket, obj["Key"], tmp)
            path = staging.put_file(tmp, rel)
            tmp.unlink(missing_ok=True)
        staging.remember(key, etag, size, path)
        return path

    with cf.ThreadPoolExecutor(max_workers=max(1, opts.workers)) as pool:
        futures = [pool.submit(fetch, rel) for rel in wanted]
        for rel, future in zip(
            wanted, tqdm(futures, desc=f"download {domain}", disable=not progress), strict=True
        ):
            source = f"s3://{bucket}/{objects[rel]['Key']}"
            try:
                path = future.result()
            except errors as exc:
                for f in futures:
                    f.cancel()
                raise IngestError(f"cannot download '{source}' ({exc}) {hint}") from exc
            name = PurePosixPath(rel).name
            if _kind_of_name(rel) == "image":
                yield Item(domain, source, name, path=path, staged=True)
            else:
                yield from tfrecord_items(path, source, domain, staging)


# --- entry point --------------------------------------------------------------------------


def describe(spec: str | os.PathLike) -> str:
    """What kind of source a `data.*_dir` value is: 's3', 'zip', 'folder' or 'tfrecord'."""
    spec = str(spec)
    if is_s3_uri(spec):
        return "s3"
    path = Path(spec)
    if path.is_file() and (path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)):
        return "zip"
    if path.is_dir():
        return "folder"
    if path.is_file() and path.suffix.lower() in TFRECORD_EXTENSIONS:
        return "tfrecord"
    if not path.exists():
        raise IngestError(
            f"data source '{spec}' does not exist (check data.photo_dir / data.monet_dir: a "
            f"folder, a .zip, or s3://bucket/prefix)"
        )
    raise IngestError(
        f"data source '{spec}' is not a folder, a .zip or .tfrec file, or an s3:// URI"
    )


def ingest(sources: dict[str, str | os.PathLike], staging_dir: Path, *,
           s3: S3Options | None = None, reuse_from: Path | None = None,
           progress: bool = False) -> list[Item]:  # fmt: skip
    """Every item of every domain (`{'photo': spec, 'monet': spec}`), in a stable order.

    Non-local content is staged under `staging_dir`; `reuse_from` (a previous staging folder)
    saves re-downloading unchanged S3 objects."""
    staging = Staging(staging_dir, reuse_from=reuse_from)
    refused_seen: set = set()
    items: list[Item] = []
    try:
        for domain, spec in sources.items():
            kind = describe(spec)
            if kind == "s3":
                found: Iterable[Item] = s3_items(str(spec), domain, staging, s3 or S3Options(),
                                                 refused_seen, progress)  # fmt: skip
            elif kind == "zip":
                found = zip_items(Path(spec), domain, staging, refused_seen=refused_seen)
            elif kind == "tfrecord":
                found = tfrecord_items(Path(spec), str(spec), domain, staging)
            else:
                found = folder_items(Path(spec), domain, staging)
            items.extend(found)
    finally:
        staging.close()
    return items
