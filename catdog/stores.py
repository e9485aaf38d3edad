"""Image stores: where the files live, and the one guarded way to list and read them.

A store is a local folder (the plain case: ``os.scandir`` and ``open``) or a URL read through
fsspec: ``s3://bucket/prefix`` (s3fs), ``gs://`` (gcsfs), ``http(s)://`` listings, or any
other fsspec protocol that is installed. Credentials come from each library's standard
places (``AWS_*`` variables, profiles, instance roles; ``AWS_ENDPOINT_URL`` for MinIO or
Ceph), never from the URL, the database or a message.

Everything that lists or re-reads an archive (the producer's walk, the workers' reads, the
report's thumbnails) goes through a :class:`Store`, so one set of rules holds everywhere:
reads stay inside the store and the configured roots, never block on a pipe or device, and
are bounded in size. Every file under a root is either listed or reported as skipped with a
reason.

File names are stored as text. A name the file system holds as bytes that are not UTF-8 (old
Windows or Samba archives in Latin-1) is kept with its undecodable bytes written ``\\xNN``
and literal backslashes doubled; :func:`decode_name` turns the stored text back into the
exact name on disk. Names that are valid UTF-8 without a backslash are stored unchanged.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote_plus, urlsplit
from xml.etree import ElementTree

from catdog.images import IMAGE_EXTENSIONS, ImageError, read_file

#: Why a file under a root is not registered (the values are what `-v` and summaries show).
NOT_AN_IMAGE = "not an image type"
LINK_OUT = "link out of the store"
LINK_LOOP = "symlink loop"
LINK_DANGLING = "dangling link"
LINK_TO_FOLDER = "link to a folder (not followed)"
NOT_REGULAR = "not a regular file (pipe, device or socket)"
UNREADABLE = "unreadable"

#: One undecodable byte as Python's file system codec hands it over (surrogateescape).
_ESCAPED_BYTE = re.compile(r"[\udc80-\udcff]")
_STORED_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


class ServerError(OSError):
    """An object store that kept answering a read with a server error (after retries)."""


class StoreUnavailable(OSError):
    """A store that cannot be listed (no such bucket, no credentials, no network): one line."""


#: An object as a listing gives it: (path with its bucket, size, mtime, version tag).
Listed = tuple[str, int, float, str | None]

#: Called for each file that is not listed: (stored name, reason).
OnSkip = Callable[[str, str], None]


def encode_name(name: str) -> str:
    """The stored (UTF-8, readable) text of a file system name; see :func:`decode_name`."""
    if "\\" not in name and not _ESCAPED_BYTE.search(name):
        return name
    name = name.replace("\\", "\\\\")
    return _ESCAPED_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", name)


def decode_name(stored: str) -> str:
    """The file system name (``os.fsdecode`` form) of a stored name."""
    if "\\" not in stored:
        return stored

    def unescape(m: re.Match[str]) -> str:
        token = m.group(1)
        return "\\" if token == "\\" else chr(0xDC00 + int(token[1:], 16))

    return _STORED_ESCAPE.sub(unescape, stored)


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A file found in a store: its stored name relative to the root, size, mtime and the
    store's version tag of its content (S3 ETag, GCS generation; None for local files)."""

    path: str
    size: int
    mtime: float
    version: str | None = None


class Store(Protocol):
    """A place images are listed from and read back by (root, stored relative name)."""

    root: str

    def walk(self, on_skip: OnSkip | None = None) -> Iterator[FileEntry]:
        """Every image file under the root; every other file goes to ``on_skip``."""
        ...

    def read(self, name: str, max_bytes: int) -> bytes:
        """The bytes of one listed file, or ImageError with a reason."""
        ...

    def read_many(self, names: list[str], max_bytes: int) -> list[bytes | ImageError]:
        """Several files at once (remote stores fetch them concurrently)."""
        ...


def _skip(on_skip: OnSkip | None, name: str, reason: str) -> None:
    if on_skip is not None:
        on_skip(encode_name(name), reason)


class LocalStore:
    """A folder on a local disk or mounted share, walked recursively."""

    def __init__(self, root: str | Path, allowed_roots: list[Path] | None = None) -> None:
        path = Path(decode_name(str(root))).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {root}")
        self._single: str | None = None
        if path.is_file():
            self._single = path.name
            path = path.parent
        self._path = path.resolve()
        self.root = encode_name(str(self._path))
        self._allowed = [r.resolve() for r in allowed_roots or []]

    def walk(self, on_skip: OnSkip | None = None) -> Iterator[FileEntry]:
        """Files in name order; links are followed only to files inside the root.

        An explicit stack instead of recursion: a very deep tree cannot exhaust Python's.
        """
        if self._single is not None:
            entry = self._entry(self._path / self._single, self._single, on_skip)
            if entry is not None:
                yield entry
            return
        stack: list[tuple[str, str]] = [(str(self._path), "")]
        while stack:
            folder, prefix = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                _skip(on_skip, prefix or ".", f"{UNREADABLE}: {exc.strerror or exc}")
                continue
            folders = []
            for e in entries:
                rel = prefix + e.name
                try:
                    if e.is_dir(follow_symlinks=False):
                        folders.append((e.path, rel + "/"))
                        continue
                except OSError as exc:
                    _skip(on_skip, rel, f"{UNREADABLE}: {exc.strerror or exc}")
                    continue
                entry = self._entry(Path(e.path), rel, on_skip)
                if entry is not None:
                    yield entry
            stack.extend(reversed(folders))  # popped in name order

    def _entry(self, path: Path, rel: str, on_skip: OnSkip | None) -> FileEntry | None:
        """The entry of one file, or None after reporting why it is skipped."""
        if os.path.splitext(path.name)[1].lower() not in IMAGE_EXTENSIONS:
            _skip(on_skip, rel, NOT_AN_IMAGE)
            return None
        try:
            if path.is_symlink():
                reason = self._link_problem(path)
                if reason is not None:
                    _skip(on_skip, rel, reason)
                    return None
            st = path.stat()
        except OSError as exc:
            _skip(on_skip, rel, f"{UNREADABLE}: {exc.strerror or exc}")
            return None
        if not stat.S_ISREG(st.st_mode):
            _skip(on_skip, rel, NOT_REGULAR)
            return None
        return FileEntry(encode_name(rel), st.st_size, st.st_mtime)

    def _link_problem(self, link: Path) -> str | None:
        """Why a link is not followed, or None for a link to a file inside the root."""
        try:
            target = link.resolve(strict=True)
        except RuntimeError:  # Python 3.11 reports a loop this way, not as OSError
            return LINK_LOOP
        except FileNotFoundError:
            return LINK_DANGLING
        except OSError as exc:
            return LINK_LOOP if exc.errno == 40 else f"{UNREADABLE}: {exc.strerror or exc}"
        if not target.is_relative_to(self._path):
            return LINK_OUT
        if target.is_dir():
            return LINK_TO_FOLDER
        return None

    def path_of(self, name: str) -> Path:
        """The file a stored name stands for, refused if it leads outside the allowed roots.

        Links and ``..`` are resolved first, so neither can lead a reader out of the store.
        """
        candidate = (self._path / decode_name(name)).resolve()
        allowed = self._allowed or [self._path]
        if not any(candidate.is_relative_to(root) for root in allowed):
            raise ImageError("refused: path is outside the configured store roots")
        if self._allowed and not any(self._path.is_relative_to(r) for r in self._allowed):
            raise ImageError("refused: store is outside the configured store roots")
        return candidate

    def read(self, name: str, max_bytes: int) -> bytes:
        """The file's bytes: confined, never blocking on a pipe or device, bounded in size."""
        return read_file(self.path_of(name), max_bytes)

    def read_many(self, names: list[str], max_bytes: int) -> list[bytes | ImageError]:
        """Each file in turn: a local disk gains nothing from more reads in flight here."""
        out: list[bytes | ImageError] = []
        for name in names:
            try:
                out.append(self.read(name, max_bytes))
            except ImageError as exc:
                out.append(exc)
        return out


class FsspecStore:
    """A prefix of an object store or any fsspec file system, named by its URL."""

    def __init__(self, url: str, allowed_roots: list[str] | None = None) -> None:
        import fsspec

        parts = urlsplit(url)
        if parts.username or parts.password:
            raise ValueError(
                "a store URL carries no credentials: use the provider's standard "
                "configuration (for S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or "
                "an instance role)"
            )
        _quiet_query_strings()
        self.root = url.rstrip("/")
        self.fs, path = fsspec.core.url_to_fs(self.root)
        self._path = path.rstrip("/")
        self._allowed = [_url_prefix(r) for r in allowed_roots or [] if is_url(r)]
        self._local_only = bool(allowed_roots) and not self._allowed

    def walk(self, on_skip: OnSkip | None = None) -> Iterator[FileEntry]:
        """Every object under the prefix with the size, time and version tag the listing gives."""
        signed = self._signed_s3()
        listing = signed.listing(self._path) if signed is not None else None
        if listing is None:
            listing = self._find()
        if len(listing) == 1 and listing[0][0] == self._path and "/" in self._path:
            # The root names one object, not a prefix: a store of one, as a local file is,
            # rooted at its folder so that its stored name is its own.
            self.root = self.root.rsplit("/", 1)[0]
            self._path = posixpath.dirname(self._path)
        listing.sort()
        for path, size, mtime, version in listing:
            rel = path[len(self._path) :].lstrip("/")
            if os.path.splitext(rel)[1].lower() not in IMAGE_EXTENSIONS:
                _skip(on_skip, rel, NOT_AN_IMAGE)
                continue
            yield FileEntry(rel, size, mtime, version)

    def _find(self) -> list[Listed]:
        """The listing through fsspec (any file system; S3 when the plain listing cannot)."""
        try:
            listing = self.fs.find(self._path, detail=True, withdirs=False)
        except Exception as exc:  # noqa: BLE001 - any client error: say which store, briefly
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise StoreUnavailable(
                f"cannot list {self.root}: {type(exc).__name__}: {first[:200]}"
            ) from exc
        return [
            (path, int(info.get("size") or 0), _mtime(info), _version(info))
            for path, info in listing.items()
        ]

    def _object(self, name: str) -> str:
        """The object path of a stored name, refused outside the prefix and allowed roots."""
        path = posixpath.normpath(f"{self._path}/{name}")
        if not (path + "/").startswith(self._path + "/"):
            raise ImageError("refused: path is outside the configured store roots")
        full = _url_prefix(f"{self.root}/{name}")
        if self._local_only or (
            self._allowed and not any(full.startswith(root) for root in self._allowed)
        ):
            raise ImageError("refused: store is outside the configured store roots")
        return path

    def signed_url(self, name: str, expires_s: int) -> str:
        """A URL a browser can fetch one object by: presigned where the store signs
        (``fs.sign``: S3, GCS), the object's own URL for plain HTTP stores."""
        path = self._object(name)
        if self.root.startswith(("http://", "https://")):
            return f"{self.root}/{quote(name)}"
        return str(self.fs.sign(path, expiration=expires_s))

    def read(self, name: str, max_bytes: int) -> bytes:
        """One object's bytes, never more than ``max_bytes`` + 1 requested from the store."""
        (result,) = self.read_many([name], max_bytes)
        if isinstance(result, ImageError):
            raise result
        return result

    def read_many(self, names: list[str], max_bytes: int) -> list[bytes | ImageError]:
        """Objects fetched concurrently, each bounded, each failing alone."""
        paths: list[str | None] = []
        out: list[bytes | ImageError | None] = []
        for name in names:
            try:
                paths.append(self._object(name))
                out.append(None)
            except ImageError as exc:
                paths.append(None)
                out.append(exc)
        todo = [i for i, p in enumerate(paths) if p is not None]
        fetched: list[object] = [None] * len(todo)
        gets = self._signed_s3()
        if gets is not None and todo:
            fetched = gets.fetch([paths[i] for i in todo], max_bytes)  # type: ignore[misc]
        # Whatever the plain GETs could not settle goes through fsspec (one batched call).
        rest = [j for j, data in enumerate(fetched) if data is None]
        if rest:
            answers = self.fs.cat_ranges(
                [paths[todo[j]] for j in rest],
                [0] * len(rest),
                [max_bytes + 1] * len(rest),
                on_error="return",
            )
            for j, data in zip(rest, answers, strict=True):
                fetched[j] = data
        for i, data in zip(todo, fetched, strict=True):
            out[i] = _checked_object(data, max_bytes)
        return [r if r is not None else ImageError("not read") for r in out]

    def _signed_s3(self) -> SignedS3 | None:
        """The plain-HTTP reader of an S3 store; None for other file systems."""
        return _signed_for(self.fs) if "s3" in _protocols(self.fs) else None


@lru_cache(maxsize=8)
def _signed_for(fs: object) -> SignedS3:
    # One per file system (fsspec keeps one instance per set of options), shared by every
    # prefix read through it: one connection pool and one set of threads per process.
    return SignedS3(fs)


def _protocols(fs: object) -> tuple[str, ...]:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


#: Object GETs one S3 store keeps in flight (per process). A GET costs the client well under
#: a millisecond of CPU and the store milliseconds of waiting: reads must overlap.
READS_IN_FLIGHT = 32
#: Keys asked for per listing page. AWS, MinIO and Ceph answer at most 1,000 whatever is
#: asked (the API allows asking for more); a server without that cap (moto's) answers fewer,
#: larger pages, and lists its whole bucket once per page, so fewer pages cost it much less.
LIST_PAGE = 10_000
#: Folders of a prefix listed at once, each as its own chain of pages (S3 serves listings of
#: different prefixes in parallel). A prefix with more folders is listed as one chain: a
#: page per folder would cost more round trips than it saves.
FOLDER_LISTINGS = 256
#: How far down a chain of single folders (``archive/2024/``) the listing looks for folders
#: to list at once.
FOLDER_DEPTH = 4
#: Seconds a signed GET stays valid: it is used at once, so only clock skew needs room.
SIGNED_FOR_S = 900


class SignedS3:
    """S3 reads and listings as signed GETs on a plain urllib3 connection pool.

    A GET through s3fs costs the client about 1.65 ms of CPU (aiobotocore signs the request,
    runs its event hooks and parses the response); a presigned URL fetched with urllib3
    reads the same bytes for about 0.9 ms, a GET signed in its headers by botocore's SigV4
    signer for about 0.65 ms. The client is configured like the
    s3fs one (credentials from the same places, ``AWS_ENDPOINT_URL``). Plain answers are
    settled here: an object that is there or is not, a lost connection or a server error
    after retries. Anything else (a redirect to another region, a refused signature) is left
    to s3fs, which knows those cases. A signed URL carries a signature that is good for a few
    minutes, never the secret key; urllib3 logs it without its query string.
    """

    def __init__(self, fs: object) -> None:
        import botocore.session
        import urllib3
        from botocore import UNSIGNED
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.config import Config

        kwargs = dict(getattr(fs, "client_kwargs", {}) or {})
        for name, attr in (
            ("aws_access_key_id", "key"),
            ("aws_secret_access_key", "secret"),
            ("aws_session_token", "token"),
            ("endpoint_url", "endpoint_url"),
        ):
            value = getattr(fs, attr, None)
            if value is not None:
                kwargs.setdefault(name, value)
        config = {
            k: v
            for k, v in (getattr(fs, "config_kwargs", {}) or {}).items()
            if k in ("region_name", "signature_version", "s3")
        }
        # Signature version 4 unless configured otherwise (botocore presigns with version 2
        # by default, which AWS regions opened since 2014 refuse).
        config.setdefault("signature_version", "s3v4")
        if getattr(fs, "anon", False):
            config["signature_version"] = UNSIGNED
        session = botocore.session.Session()
        if kwargs.get("aws_access_key_id") and kwargs.get("aws_secret_access_key"):
            # Given ones go to the session, so the client and the header signer share them.
            session.set_credentials(
                kwargs.pop("aws_access_key_id"),
                kwargs.pop("aws_secret_access_key"),
                kwargs.pop("aws_session_token", None),
            )
        self._client = session.create_client("s3", config=Config(**config), **kwargs)
        # Object GETs are signed in their headers (SigV4), at the address the client itself
        # gives each bucket (path or virtual-host style, the endpoint's region): a presigned
        # URL costs the client's whole endpoint resolution per object and a long URL for
        # urllib3 to parse, about 0.25 ms of the 0.9 ms a GET cost.
        self._header_signed = config["signature_version"] == "s3v4"
        self._credentials = session.get_credentials()
        self._region = self._client.meta.region_name
        self._signer, self._aws_request = S3SigV4Auth, AWSRequest
        self._bases: dict[str, str | None] = {}
        self._bases_lock = threading.Lock()
        self._http = urllib3.PoolManager(
            maxsize=READS_IN_FLIGHT,
            retries=urllib3.Retry(
                total=3,
                backoff_factor=0.2,
                status_forcelist=(500, 502, 503, 504),
                redirect=0,
                raise_on_status=False,  # the last answer says what went wrong
            ),
            timeout=urllib3.Timeout(connect=10, read=60),
        )
        self._pool = ThreadPoolExecutor(READS_IN_FLIGHT, thread_name_prefix="s3-get")
        _quiet_query_strings()

    def listing(self, path: str) -> list[Listed] | None:
        """Every object under a prefix, or None where s3fs should list it instead.

        A listing is a chain of pages, each asked for only when the one before it is in: one
        prefix lists at one page's round trip at a time (on S3 about 1,000 keys per 50-200
        ms). The prefix is first listed one level deep (``Delimiter=/``), down a chain of
        single folders, and its folders are then listed all at once, each on its own chain,
        up to :data:`FOLDER_LISTINGS` of them; a prefix with more folders than that is
        listed as one chain. Pages are parsed by ElementTree: botocore's parser spent 60% of
        a listing's client CPU (42% on dateutil reading each LastModified), about 80 us per
        object. Nothing found also means None: the root may name one object, which s3fs
        finds.
        """
        bucket, _, key = path.partition("/")
        prefix = f"{key}/" if key else ""
        out: list[Listed] = []
        folders: list[str] = []
        for _ in range(FOLDER_DEPTH):
            above = len(out)
            folders = []
            if not self._pages(bucket, prefix, out, folders):
                return None
            if len(folders) != 1:
                break
            prefix = folders[0]
        if len(folders) > FOLDER_LISTINGS:  # many small folders: one chain costs fewer pages
            del out[above:]
            folders = []
            if not self._pages(bucket, prefix, out, None):
                return None
        elif folders:
            found = list(self._pool.map(lambda f: self._folder(bucket, f), folders))
            if any(f is None for f in found):
                return None
            for objects in found:
                out.extend(objects)  # type: ignore[arg-type]
        return out or None

    def _folder(self, bucket: str, prefix: str) -> list[Listed] | None:
        out: list[Listed] = []
        return out if self._pages(bucket, prefix, out, None) else None

    def _pages(
        self, bucket: str, prefix: str, out: list[Listed], folders: list[str] | None
    ) -> bool:
        """Add every object under ``prefix`` to ``out`` (only those one level down, with the
        folders below in ``folders``, where that is given); False if S3 did not answer."""
        params: dict[str, object] = {
            "Bucket": bucket,
            "Prefix": prefix,
            "MaxKeys": LIST_PAGE,
            "EncodingType": "url",
        }
        if folders is not None:
            params["Delimiter"] = "/"
        while True:
            try:
                url = self._client.generate_presigned_url(
                    "list_objects_v2", Params=params, ExpiresIn=SIGNED_FOR_S
                )
                answer = self._http.request("GET", url, redirect=False)
                if answer.status != 200:
                    return False
                token = _listing_page(answer.data, bucket, out, folders)
            except Exception:  # noqa: BLE001 - s3fs lists it again and says what is wrong
                return False
            if token is None:
                return True
            params["ContinuationToken"] = token

    def fetch(self, paths: list[str], max_bytes: int) -> list[object]:
        """Each object's bytes (at most ``max_bytes`` + 1), an error, or None: ask s3fs."""
        return list(self._pool.map(lambda p: self._get(p, max_bytes), paths))

    def _base(self, bucket: str) -> str | None:
        """The URL a bucket's objects are addressed under (once per bucket), or None."""
        with self._bases_lock:
            if bucket not in self._bases:
                probe = "catdog-address-probe"
                url = self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": probe}, ExpiresIn=60
                ).split("?", 1)[0]
                self._bases[bucket] = url[: -len(probe)] if url.endswith("/" + probe) else None
            return self._bases[bucket]

    def _request(self, bucket: str, key: str, max_bytes: int) -> tuple[str, dict[str, str]]:
        """The URL and headers of one bounded object GET, signed."""
        headers = {"Range": f"bytes=0-{max_bytes}"}
        base = self._base(bucket) if self._header_signed else None
        if base is None:
            url = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=SIGNED_FOR_S
            )
            return url, headers
        url = base + quote(key, safe="/~")
        credentials = self._credentials
        if credentials is None:
            raise LookupError("no credentials")  # s3fs reads it, or says what is missing
        request = self._aws_request(method="GET", url=url, headers=headers)
        self._signer(credentials.get_frozen_credentials(), "s3", self._region).add_auth(request)
        return url, dict(request.headers.items())

    def _get(self, path: str, max_bytes: int) -> object:
        import urllib3

        bucket, _, key = path.partition("/")
        try:
            url, headers = self._request(bucket, key, max_bytes)
            answer = self._http.request(
                "GET", url, headers=headers, preload_content=False, redirect=False
            )
        except urllib3.exceptions.HTTPError as exc:
            # Never the exception's text: it may hold a signed URL.
            return ConnectionError(type(exc).__name__)
        except Exception:  # noqa: BLE001 - no credentials, an odd key: s3fs says what it is
            return None
        try:
            if answer.status == 404:
                return FileNotFoundError(path)
            if answer.status == 416:  # a range of an empty object
                return b""
            if answer.status >= 500:
                return ServerError(f"HTTP {answer.status}")
            if answer.status not in (200, 206):
                return None
            data = answer.read(max_bytes + 1)
        except urllib3.exceptions.HTTPError as exc:
            answer.close()
            return ConnectionError(type(exc).__name__)
        if len(data) > max_bytes:
            answer.close()  # the rest is never read: the connection cannot be reused
        else:
            answer.release_conn()
        return data


def _listing_page(
    body: bytes, bucket: str, out: list[Listed], folders: list[str] | None = None
) -> str | None:
    """Add the objects of one ListObjectsV2 page to ``out`` (and its common prefixes to
    ``folders`` where given); the next page's token, if any."""
    root = ElementTree.fromstring(body)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    encoded = root.findtext(f"{ns}EncodingType") == "url"
    if folders is not None:
        for common in root.iterfind(f"{ns}CommonPrefixes"):
            folder = common.findtext(f"{ns}Prefix") or ""
            folders.append(unquote_plus(folder) if encoded else folder)
    tags = {f"{ns}{name}": name for name in ("Key", "Size", "LastModified", "ETag")}
    for item in root.iterfind(f"{ns}Contents"):
        fields = {tags[child.tag]: child.text or "" for child in item if child.tag in tags}
        key = unquote_plus(fields["Key"]) if encoded else fields["Key"]
        if key.endswith("/"):
            continue  # a folder marker, not a file
        when = fields.get("LastModified")
        out.append(
            (
                f"{bucket}/{key}",
                int(fields.get("Size") or 0),
                datetime.fromisoformat(when).timestamp() if when else 0.0,
                fields.get("ETag", "").strip('"') or None,
            )
        )
    if root.findtext(f"{ns}IsTruncated") != "true":
        return None
    token = root.findtext(f"{ns}NextContinuationToken")
    if not token:
        raise ValueError("a truncated listing page without a continuation token")
    return token


class _NoQueryString(logging.Filter):
    """Cuts the query string (signature, session token) off signed URLs in urllib3's logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                a.split("?", 1)[0] if isinstance(a, str) and "Signature=" in a else a
                for a in record.args
            )
        return True


#: Loggers whose DEBUG records print request headers and signing input (session token,
#: signature): they keep to warnings even when the process logs at DEBUG (``catdog -vv``).
SIGNING_LOGGERS = (
    "botocore.auth",
    "botocore.endpoint",
    "botocore.httpsession",
    "aiobotocore.endpoint",
    "aiobotocore.httpsession",
)


@lru_cache(maxsize=1)
def _quiet_query_strings() -> None:
    # Its retry warnings and request log carry the URL (logger filters see only their own
    # records, not those of child loggers: each one that logs a URL gets the filter).
    for name in ("urllib3.connectionpool", "urllib3.util.retry"):
        logging.getLogger(name).addFilter(_NoQueryString())
    for name in SIGNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _checked_object(data: object, max_bytes: int) -> bytes | ImageError:
    """The bytes of one fetched object, or the reason it cannot be used (no secrets in it)."""
    if isinstance(data, FileNotFoundError):
        return ImageError("file not found (deleted or moved since the scan)")
    if isinstance(data, PermissionError):
        return ImageError("permission denied")
    if isinstance(data, BaseException):
        return ImageError(f"cannot read object: {type(data).__name__}")
    assert isinstance(data, bytes)
    if not data:
        return ImageError("empty file (0 bytes)")
    if len(data) > max_bytes:
        return ImageError(f"file too large (more than {max_bytes} bytes)")
    return data


def _mtime(info: dict[str, object]) -> float:
    """Modification time from a listing entry, whatever the file system calls it."""
    for key in ("LastModified", "mtime", "updated", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


#: Listing fields that name one version of an object's content, by file system.
_VERSION_KEYS = ("ETag", "generation", "etag", "VersionId")


def _version(info: dict[str, object]) -> str | None:
    """The version tag a listing entry carries (S3 ETag, GCS generation), if any."""
    for key in _VERSION_KEYS:
        value = info.get(key)
        if value not in (None, ""):
            return str(value).strip('"')
    return None


def _url_prefix(url: str) -> str:
    """A URL normalised for prefix comparison (no trailing slash, '..' resolved)."""
    parts = urlsplit(url)
    path = posixpath.normpath(parts.netloc + "/" + parts.path.lstrip("/"))
    return f"{parts.scheme}://{path.rstrip('/')}/"


def is_url(root: str) -> bool:
    """Whether a root names a store by URL (``s3://...``) rather than a local folder."""
    scheme = urlsplit(root).scheme
    return len(scheme) > 1 and "://" in root and scheme != "file"


def scan_store(root: str, allowed_roots: list[str] | None = None) -> Store:
    """The store to walk for a root given on the command line (a path or a URL)."""
    if is_url(root):
        return FsspecStore(root, allowed_roots)
    return LocalStore(root, [Path(r) for r in allowed_roots or [] if not is_url(r)])


def open_store(root: str, allowed_roots: Sequence[str | Path] | None = None) -> Store:
    """The store of a registered root, for reading (workers, reports).

    A local root that no longer exists still gives a store: each read then fails with a
    reason. Remote stores are cached per process (one client and connection pool each).
    """
    roots = tuple(str(r) for r in allowed_roots or [])
    if is_url(root):
        return _remote(root, roots)
    return _local(root, roots)


@lru_cache(maxsize=256)
def _local(root: str, allowed_roots: tuple[str, ...]) -> _ReadOnlyLocal:
    # Cached: workers open a store per image, and resolving its root and the allowed roots
    # each time is file-system work on the hot path.
    local = [Path(r) for r in allowed_roots if not is_url(r)]
    return _ReadOnlyLocal(root, local, bool(allowed_roots))


def forget_remote_stores() -> None:
    """Drop cached stores (remote clients, resolved roots), e.g. after credentials change."""
    _remote.cache_clear()
    _local.cache_clear()
    _signed_for.cache_clear()


@lru_cache(maxsize=64)
def _remote(root: str, allowed_roots: tuple[str, ...]) -> FsspecStore:
    return FsspecStore(root, list(allowed_roots))


class _ReadOnlyLocal(LocalStore):
    """A local store opened by its stored root, without checking the root exists."""

    def __init__(self, root: str, allowed_roots: list[Path], configured: bool) -> None:
        self._single = None
        self._path = Path(decode_name(root)).resolve()
        self.root = root
        self._allowed = [r.resolve() for r in allowed_roots]
        if configured and not self._allowed:
            # Only URL roots are configured: no local folder may be read.
            self._allowed = [Path("/nonexistent-catdog-root")]
