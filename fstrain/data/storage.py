"""One storage API over `s3://bucket/key` URIs and local paths.

Every stage reads and writes through these module-level functions, so a pipeline root can be a local directory
or any S3-compatible endpoint (AWS, MinIO, Ceph, R2) without code changes.

S3 settings come from `configure_s3(...)` when called, otherwise from the standard AWS chain plus
`AWS_ENDPOINT_URL` / `AWS_DEFAULT_REGION` (read at call time, so subprocesses and Ray workers that inherit the
environment behave the same; `AWS_MAX_ATTEMPTS` sets the retry attempts). One boto3 client is cached per
(settings, process).

Writes are atomic: local files are written to a temp file in the same directory and renamed over the target;
S3 objects appear only when a PUT or a multipart upload completes.

Keys are data: `s3://BUCKET/KEY` is split at the first '/' after the bucket and the rest is the key, byte for byte
(`#`, `?`, `%`, `+`, spaces, quotes, non-ASCII are all legal S3 key characters); nothing parses a key as a URL.

Failures of the connection or the service (reset, truncated body, timeout, 5xx, throttling such as `503 SlowDown`)
are retried under one policy: botocore's standard mode for each request, and the same attempts and backoff for
a body cut mid-stream (the read resumes with a ranged GET of the same object). When the attempts run out the
error is a `TransientStorageError` (`.transient` is True): running again may succeed. Every other error (missing
object, access denied, bad URI) is not transient.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import random
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterable
from urllib.parse import urlparse

DEFAULT_MULTIPART_BYTES = 16 * 1024 * 1024
# Prefix of temp files made by atomic local writes; listings skip them so readers never see half-written files.
TEMP_PREFIX = ".fstrain-tmp-"


# ----------------------------------------------------------------------------------------------------- errors
class StorageError(RuntimeError):
    """Base class: every storage failure names the URI it concerns."""

    transient = False  # True: the connection or the service failed, not the request; running again may succeed

    def __init__(self, uri: str, message: str):
        super().__init__(f"{uri}: {message}")
        self.uri = uri


class TransientStorageError(StorageError):
    """Retries ran out on a connection or service failure (reset, truncated body, timeout, 5xx, throttling)."""

    transient = True


class NotFoundError(StorageError, FileNotFoundError):
    """The object or file does not exist."""


class NoSuchBucketError(StorageError):
    """The bucket of an s3:// URI does not exist at the configured endpoint."""


class AccessDeniedError(StorageError, PermissionError):
    """Credentials were rejected or lack permission for this URI."""


class BadURIError(StorageError, ValueError):
    """The string is not a local path or s3://bucket/key URI."""


# --------------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class S3Settings:
    """Everything that identifies one S3 client. Unset fields fall back to boto3's standard chain."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)  # never printed
    session_token: str | None = dataclasses.field(default=None, repr=False)
    profile: str | None = None
    addressing_style: str | None = None  # "path" | "virtual" | "auto"; default path when an endpoint is set
    max_attempts: int = 5
    multipart_threshold: int = DEFAULT_MULTIPART_BYTES
    multipart_chunksize: int = DEFAULT_MULTIPART_BYTES
    max_concurrency: int = 4


_overrides: dict[str, Any] = {}
_overrides_lock = threading.Lock()
_client_lock = threading.Lock()


def configure_s3(
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    profile: str | None = None,
    addressing_style: str | None = None,
    max_attempts: int | None = None,
    multipart_threshold: int | None = None,
    multipart_chunksize: int | None = None,
    max_concurrency: int | None = None,
    reset: bool = False,
) -> S3Settings:
    """Set S3 options for this process (None = keep the current value / use the environment).

    `reset=True` first forgets earlier `configure_s3` calls. Returns the settings now in effect.
    """
    given = {k: v for k, v in locals().items() if k != "reset" and v is not None}
    with _overrides_lock:
        if reset:
            _overrides.clear()
        _overrides.update(given)
    return s3_settings()


def s3_settings() -> S3Settings:
    """The settings in effect: `configure_s3` values over the environment."""
    env = os.environ
    base = S3Settings(
        endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
        region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None,
        profile=env.get("AWS_PROFILE") or None,
        max_attempts=int(env.get("AWS_MAX_ATTEMPTS") or S3Settings.max_attempts),  # the standard AWS variable
    )
    with _overrides_lock:
        return dataclasses.replace(base, **_overrides)


@functools.lru_cache(maxsize=16)
def _cached_session(settings: S3Settings, pid: int):
    # pid is part of the key: boto3 sessions/clients must not cross a fork (DataLoader workers, multiprocessing).
    import boto3

    return boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        region_name=settings.region,
        profile_name=settings.profile,
    )


@functools.lru_cache(maxsize=16)
def _cached_client(settings: S3Settings, pid: int):
    from botocore.config import Config

    session = _cached_session(settings, pid)
    style = settings.addressing_style or ("path" if settings.endpoint_url else "auto")
    config = Config(
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        # Newer botocore adds CRC checksums to every request by default; MinIO/Ceph/R2 may reject them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": style},
        max_pool_connections=max(10, settings.max_concurrency * 2),
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


def s3_client(settings: S3Settings | None = None):
    """The cached boto3 S3 client for the given (default: current) settings."""
    with _client_lock:  # creating boto3 sessions is not thread-safe; using the client afterwards is
        return _cached_client(settings or s3_settings(), os.getpid())


def _transfer_config(settings: S3Settings):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=settings.multipart_threshold,
        multipart_chunksize=settings.multipart_chunksize,
        max_concurrency=settings.max_concurrency,
        use_threads=settings.max_concurrency > 1,
        num_download_attempts=settings.max_attempts,  # body failures of a download: the same number of tries
    )


# -------------------------------------------------------------------------------------------------------- URIs
def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def parse_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key"); the key may be empty (bucket root).

    The key is everything after the first '/' following the bucket, taken as it is: it is never URL-decoded and
    may hold any character S3 allows (`#`, `?`, `%`, `+`, spaces, non-ASCII, repeated '/').
    """
    uri = str(uri)
    if not uri.startswith("s3://"):
        raise BadURIError(uri, "not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise BadURIError(uri, "no bucket name: write s3://BUCKET/key")
    return bucket, key


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")


def _local_path(uri: str) -> str:
    uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri:
        raise BadURIError(str(uri), "empty path: give a local path or s3://bucket/key")
    if uri.startswith("file://"):
        return uri[len("file://"):]
    scheme = _SCHEME.match(uri)
    # Only a leading `name://` is a scheme: '#', '?', '%' or ':' later in a path are ordinary file-name characters.
    if scheme:
        raise BadURIError(uri, f"unsupported scheme '{scheme.group(1)}': use a local path or s3://bucket/key")
    return uri


def join(uri: str, *parts: str) -> str:
    """Join path parts with '/' (for both local paths and s3:// URIs)."""
    out = os.fspath(uri)
    for part in parts:
        part = str(part)
        if not part:
            continue
        out = out.rstrip("/") + "/" + part.lstrip("/") if out else part
    return out


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def dirname(uri: str) -> str:
    uri = str(uri).rstrip("/")
    if is_s3(uri):
        bucket, key = parse_s3(uri)
        return f"s3://{bucket}/" + (key.rsplit("/", 1)[0] if "/" in key else "")
    return os.path.dirname(uri)


# ------------------------------------------------------------------------------------------- error translation
# S3 error codes that mean "the service is busy or failed", whatever the HTTP status says.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "ProvisionedThroughputExceededException", "RequestTimeout", "RequestTimeoutException", "InternalError",
    "ServiceUnavailable", "PriorRequestNotComplete"})


def is_transient_failure(exc: BaseException) -> bool:
    """Whether an exception from boto3/botocore/urllib3/sockets is a connection or service failure (retryable).

    Connection resets, truncated bodies, timeouts, 5xx answers and throttling are; a missing object, a denied
    request or a malformed call are not. Wrapped causes (boto3's S3UploadFailedError) are looked through.
    """
    import http.client

    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError
    from botocore.exceptions import IncompleteReadError, ResponseStreamingError
    from urllib3.exceptions import HTTPError as URLLib3Error

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, StorageError):
            return exc.transient
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = _status(exc) or 0
            return code in TRANSIENT_CODES or status >= 500 or status == 429
        if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError,
                            URLLib3Error, http.client.HTTPException, ConnectionError, TimeoutError)):
            return True
        if type(exc).__name__ == "RetriesExceededError":  # s3transfer: a download's own retries ran out
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def retry_delay(attempt: int) -> float:
    """Seconds to wait before retry `attempt` (1, 2, ...): botocore's standard-mode backoff, full jitter, cap 20 s."""
    return random.random() * min(2.0 ** (attempt - 1), 20.0)


def _translate(exc: Exception, uri: str, settings: S3Settings | None = None) -> StorageError:
    """Map a botocore exception to our error types with a message that says what to do."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ParamValidationError

    endpoint = (settings.endpoint_url if settings else None) or "the default AWS endpoint"
    attempts = (settings or s3_settings()).max_attempts
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        bucket = parse_s3(uri)[0] if is_s3(uri) else "?"
        if code == "NoSuchBucket":
            return NoSuchBucketError(uri, f"no such bucket '{bucket}' at {endpoint}; create it or fix the URI")
        if code in ("NoSuchKey", "NotFound", "404") or status == 404:
            return NotFoundError(uri, "not found (no such object)")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                    "InvalidToken", "ExpiredToken") or status == 403:
            return AccessDeniedError(
                uri, f"access denied ({code or status}) at {endpoint}; check the credentials and bucket policy")
        if code in ("PreconditionFailed", "412") or status == 412:
            return TransientStorageError(uri, "the object changed while it was being read; read it again")
        if is_transient_failure(exc):
            return TransientStorageError(uri, f"S3 error {code or status} ({err.get('Message', '')}) after "
                                              f"{attempts} attempts; the service is busy or failing, try again")
        return StorageError(uri, f"S3 error {code or status}: {err.get('Message', exc)}")
    if isinstance(exc, NoCredentialsError):
        return AccessDeniedError(uri, "no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                                      "a profile, or call configure_s3(...)")
    if isinstance(exc, EndpointConnectionError):
        return TransientStorageError(uri, f"cannot connect to S3 endpoint {endpoint}; check AWS_ENDPOINT_URL")
    if isinstance(exc, ParamValidationError):
        return BadURIError(uri, f"invalid S3 request: {exc}")
    if is_transient_failure(exc):
        return TransientStorageError(uri, f"connection failed after {attempts} attempts "
                                          f"({type(exc).__name__}: {exc}); try again")
    return StorageError(uri, f"{type(exc).__name__}: {exc}")


def _s3_errors(uri: str):
    """Context manager translating botocore errors raised inside it for `uri`."""
    return _TranslateErrors(uri)


class _TranslateErrors:
    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        if exc is None or isinstance(exc, StorageError):
            return False
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, (ClientError, BotoCoreError, Boto3Error)) or is_transient_failure(exc):
            cause = exc
            if isinstance(exc, Boto3Error) and isinstance(exc.__cause__ or exc.__context__, ClientError):
                cause = exc.__cause__ or exc.__context__  # S3UploadFailedError wraps the answer that says why
            raise _translate(cause, self.uri, s3_settings()) from exc
        return False


def _raise_missing_bucket_or_key(uri: str, exc: Exception) -> None:
    """HEAD requests carry no error body: tell a missing bucket apart from a missing key with head_bucket."""
    bucket, _ = parse_s3(uri)
    try:
        s3_client().head_bucket(Bucket=bucket)
    except Exception as bucket_exc:  # noqa: BLE001 - translated below
        translated = _translate(bucket_exc, uri, s3_settings())
        if isinstance(translated, NotFoundError):
            raise NoSuchBucketError(
                uri, f"no such bucket '{bucket}' at {s3_settings().endpoint_url or 'AWS'}; "
                     "create it or fix the URI") from exc
        raise translated from exc
    raise NotFoundError(uri, "not found (no such object)") from exc


# --------------------------------------------------------------------------------------------------- reading
def read_bytes(uri: str) -> bytes:
    """The whole object / file as bytes."""
    with open_read(uri) as stream:
        return stream.read()


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def read_json(uri: str) -> Any:
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise StorageError(str(uri), f"not valid JSON: {exc}") from exc


def open_read(uri: str) -> IO[bytes]:
    """A binary stream (context manager) over the object: S3 bodies are streamed, not buffered, and a body cut
    mid-stream resumes where it stopped (see `_S3ObjectReader`)."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = parse_s3(uri)
        if not key or key.endswith("/"):
            raise BadURIError(uri, "names a bucket or prefix, not an object")
        return io.BufferedReader(_S3ObjectReader(uri, bucket, key, s3_settings()), buffer_size=READ_CHUNK)
    path = _local_path(uri)
    try:
        return open(path, "rb")
    except FileNotFoundError as exc:
        raise NotFoundError(uri, "not found (no such file)") from exc
    except IsADirectoryError as exc:
        raise BadURIError(uri, "is a directory, not a file") from exc
    except PermissionError as exc:
        raise AccessDeniedError(uri, "permission denied") from exc


READ_CHUNK = 1 << 20


class _S3ObjectReader(io.RawIOBase):
    """One object's body as a raw stream that survives a cut connection.

    botocore retries each request, but a body that breaks after the answer began (reset, truncated body, read
    timeout) is the caller's to retry: the reader then waits as botocore would and asks for the rest with a ranged
    GET pinned to the same version (If-Match its ETag), up to `max_attempts` tries in all. When they run out it
    raises TransientStorageError.
    """

    def __init__(self, uri: str, bucket: str, key: str, settings: S3Settings):
        super().__init__()
        self.uri, self.bucket, self.key, self.settings = uri, bucket, key, settings
        self.position = 0
        self.failures = 0
        self.etag: str | None = None
        self.length: int | None = None
        self._body = self._open()

    def _open(self):
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if self.position:
            kwargs.update(Range=f"bytes={self.position}-", IfMatch=self.etag)
        with _s3_errors(self.uri):  # a failed request was retried by botocore already
            response = s3_client(self.settings).get_object(**kwargs)
        if self.etag is None:
            self.etag, self.length = response.get("ETag"), int(response["ContentLength"])
        return response["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            try:
                chunk = self._body.read(len(view)) if len(view) else b""
                if not chunk and len(view) and self.length is not None and self.position < self.length:
                    raise TransientStorageError(self.uri, f"body ended at byte {self.position} of {self.length}")
            except Exception as exc:  # noqa: BLE001 - classified below
                if not is_transient_failure(exc):
                    with _s3_errors(self.uri):
                        raise
                self._resume_after(exc)
                continue
            view[:len(chunk)] = chunk
            self.position += len(chunk)
            return len(chunk)

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(READ_CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def _resume_after(self, exc: Exception) -> None:
        self.failures += 1
        self._close_body()
        if self.failures >= self.settings.max_attempts:
            raise TransientStorageError(
                self.uri, f"read failed {self.failures} times, last at byte {self.position} of {self.length} "
                          f"({type(exc).__name__}: {exc}); the connection or the service failed, try again") from exc
        time.sleep(retry_delay(self.failures))
        self._body = self._open()

    def _close_body(self) -> None:
        try:
            self._body.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is discarded either way
            pass

    def close(self) -> None:
        if not self.closed:
            self._close_body()
        super().close()


def download_file(uri: str, local_path: str | os.PathLike) -> str:
    """Copy an object to a local file (atomically); returns the local path."""
    uri, local_path = str(uri), os.fspath(local_path)
    if is_s3(uri):
        bucket, key = parse_s3(uri)
        settings = s3_settings()
        with _atomic_local_target(local_path) as tmp:
            try:
                s3_client(settings).download_file(bucket, key, tmp, Config=_transfer_config(settings))
            except Exception as exc:  # noqa: BLE001
                from botocore.exceptions import BotoCoreError, ClientError

                if isinstance(exc, ClientError) and _status(exc) == 404:
                    _raise_missing_bucket_or_key(uri, exc)
                if isinstance(exc, (ClientError, BotoCoreError)) or is_transient_failure(exc):
                    raise _translate(exc, uri, settings) from exc
                raise
        return local_path
    src = _local_path(uri)
    if not os.path.isfile(src):
        raise NotFoundError(uri, "not found (no such file)")
    with _atomic_local_target(local_path) as tmp:
        shutil.copyfile(src, tmp)
    return local_path


# --------------------------------------------------------------------------------------------------- writing
def write_bytes(uri: str, data: bytes) -> None:
    """Write bytes atomically (multipart above the configured threshold on S3)."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = _object_target(uri)
        settings = s3_settings()
        with _s3_errors(uri):
            s3_client(settings).upload_fileobj(io.BytesIO(data), bucket, key, Config=_transfer_config(settings))
        return
    with _atomic_local_target(_local_path(uri)) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(uri: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def write_json(uri: str, obj: Any, indent: int | None = 2) -> None:
    write_text(uri, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def upload_file(local_path: str | os.PathLike, uri: str) -> None:
    """Copy a local file to `uri` atomically (multipart above the threshold on S3)."""
    local_path, uri = os.fspath(local_path), str(uri)
    if not os.path.isfile(local_path):
        raise NotFoundError(local_path, "local file to upload does not exist")
    if is_s3(uri):
        bucket, key = _object_target(uri)
        settings = s3_settings()
        with _s3_errors(uri):
            s3_client(settings).upload_file(local_path, bucket, key, Config=_transfer_config(settings))
        return
    with _atomic_local_target(_local_path(uri)) as tmp:
        shutil.copyfile(local_path, tmp)


def _object_target(uri: str) -> tuple[str, str]:
    bucket, key = parse_s3(uri)
    if not key or key.endswith("/"):
        raise BadURIError(uri, "names a bucket or prefix, not an object key")
    return bucket, key


class _atomic_local_target:
    """Yields a temp path next to `path`; on success renames it over `path`, on failure removes it."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self) -> str:
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise BadURIError(self.path, f"parent {parent} is a file, not a directory") from exc
        if os.path.isdir(self.path):
            raise BadURIError(self.path, "is a directory, cannot write a file there")
        fd, self.tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=parent)
        os.close(fd)
        return self.tmp

    def __exit__(self, etype, exc, tb):
        if exc is None:
            os.replace(self.tmp, self.path)
        else:
            try:
                os.remove(self.tmp)
            except FileNotFoundError:
                pass
        return False


def _status(exc: Exception) -> int | None:
    return getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")


# ------------------------------------------------------------------------------------------- listing & more
def exists(uri: str) -> bool:
    """True if the object / file exists. A missing bucket is an error (NoSuchBucketError), not False."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = parse_s3(uri)
        if not key:
            raise BadURIError(uri, "exists() needs an object key, not a bucket")
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except Exception as exc:  # noqa: BLE001
            from botocore.exceptions import BotoCoreError, ClientError

            if isinstance(exc, ClientError) and _status(exc) == 404:
                try:
                    _raise_missing_bucket_or_key(uri, exc)
                except NotFoundError:
                    return False
            if isinstance(exc, (ClientError, BotoCoreError)):
                raise _translate(exc, uri, s3_settings()) from exc
            raise
    return os.path.isfile(_local_path(uri))


def size(uri: str) -> int:
    """Size in bytes of an object / file."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = _object_target(uri)
        try:
            return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
        except Exception as exc:  # noqa: BLE001
            from botocore.exceptions import ClientError

            if isinstance(exc, ClientError) and _status(exc) == 404:
                _raise_missing_bucket_or_key(uri, exc)
            with _s3_errors(uri):
                raise
    try:
        return os.path.getsize(_local_path(uri))
    except FileNotFoundError as exc:
        raise NotFoundError(uri, "not found (no such file)") from exc


def delete(uri: str) -> None:
    """Delete an object / file. Deleting something that does not exist is not an error (S3 semantics)."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = _object_target(uri)
        with _s3_errors(uri):
            s3_client().delete_object(Bucket=bucket, Key=key)
        return
    try:
        os.remove(_local_path(uri))
    except FileNotFoundError:
        pass


def delete_prefix(prefix_uri: str) -> int:
    """Delete every object under a prefix (directory); returns how many were deleted."""
    uris = list_uris(prefix_uri)
    if is_s3(prefix_uri):
        bucket, _ = parse_s3(prefix_uri)
        keys = [parse_s3(u)[1] for u in uris]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            with _s3_errors(prefix_uri):
                s3_client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    else:
        for uri in uris:
            delete(uri)
    return len(uris)


def list_uris(prefix_uri: str, suffixes: Iterable[str] | str | None = None) -> list[str]:
    """Every object / file under a directory-like prefix, recursively, sorted.

    The prefix is treated as a directory (`s3://b/data` lists `s3://b/data/...`, not `s3://b/database`).
    `suffixes` keeps only names ending with one of them (e.g. ".tar" or (".png", ".jpg")), case-insensitively.
    A prefix with nothing under it gives []; a missing bucket raises NoSuchBucketError.
    """
    prefix_uri = str(prefix_uri)
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None

    def keep(name: str) -> bool:
        return wanted is None or name.lower().endswith(wanted)

    if is_s3(prefix_uri):
        bucket, key = parse_s3(prefix_uri)
        key_prefix = key.rstrip("/") + "/" if key else ""
        base = f"s3://{bucket}/"
        out: list[str] = []
        with _s3_errors(prefix_uri):
            paginator = s3_client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"]
                    if not name.endswith("/") and keep(name):  # "dir/" marker objects are not files
                        out.append(base + name)
        return sorted(out)

    root = _local_path(prefix_uri)
    if os.path.isfile(root):
        raise BadURIError(prefix_uri, "is a file; list_uris needs a directory or prefix")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith(TEMP_PREFIX) or not keep(name):
                continue
            rel = name if rel_dir == "." else Path(rel_dir, name).as_posix()
            out.append(join(prefix_uri, rel))
    return sorted(out)


def make_bucket(bucket: str) -> None:
    """Create a bucket (used by tests and local set-ups); an existing bucket you own is fine."""
    uri = f"s3://{bucket}"
    settings = s3_settings()
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if settings.region and settings.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
    try:
        s3_client(settings).create_bucket(**kwargs)
    except Exception as exc:  # noqa: BLE001
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "BucketAlreadyOwnedByYou":
            return
        with _s3_errors(uri):
            raise


# -------------------------------------------------------------------------------------------------- preflight
PREFLIGHT_ATTEMPTS = 2   # a start-up check should answer in seconds, not after a full retry schedule


def check_access(uri: str, *, write: bool) -> bool:
    """Fail fast when `uri` (a folder or prefix) cannot be used; returns whether anything is there yet.

    S3: one LIST of the prefix answers a missing bucket, rejected credentials and an unreachable endpoint
    (NoSuchBucketError, AccessDeniedError, TransientStorageError); with `write`, a tiny probe object is PUT and
    deleted at once, so a read-only key is caught before any work. Local: a missing folder is NotFoundError when
    only reading; when writing, the nearest existing folder must be writable. Nothing local is created.
    """
    uri = str(uri)
    if is_s3(uri):
        bucket, key = parse_s3(uri)
        settings = dataclasses.replace(s3_settings(), max_attempts=min(PREFLIGHT_ATTEMPTS, s3_settings().max_attempts))
        client = s3_client(settings)
        key_prefix = key.rstrip("/") + "/" if key else ""
        with _s3_errors(uri):
            found = bool(client.list_objects_v2(Bucket=bucket, Prefix=key_prefix, MaxKeys=1).get("KeyCount", 0))
        if write:
            probe = f"{key_prefix}{TEMP_PREFIX}preflight-{os.getpid()}-{random.getrandbits(32):08x}"
            with _s3_errors(uri):
                client.put_object(Bucket=bucket, Key=probe, Body=b"")
                client.delete_object(Bucket=bucket, Key=probe)
        return found
    path = Path(_local_path(uri))
    if path.exists():
        if write and not (path.is_dir() and os.access(path, os.W_OK | os.X_OK)):
            raise AccessDeniedError(uri, "not a writable folder; fix the path or its permissions")
        return True
    if not write:
        raise NotFoundError(uri, "does not exist")
    parent = next(p for p in path.parents if p.exists())
    if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise AccessDeniedError(uri, f"cannot be created: {parent} is not a writable folder")
    return False


# ---------------------------------------------------------------------------------------------------- pyarrow
def pyarrow_filesystem(uri: str):
    """`(pyarrow.fs.FileSystem, path)` for Ray Data / Ray Train, built from the same settings as boto3.

    pyarrow does not read AWS_ENDPOINT_URL everywhere, so the endpoint is passed as `endpoint_override`;
    credentials are resolved once through boto3's chain so both libraries use the same identity.
    """
    import pyarrow.fs as pafs

    uri = str(uri)
    if not is_s3(uri):
        return pafs.LocalFileSystem(), os.path.abspath(_local_path(uri))
    bucket, key = parse_s3(uri)
    settings = s3_settings()
    kwargs: dict[str, Any] = {"region": settings.region or "us-east-1"}
    if settings.endpoint_url:
        endpoint = urlparse(settings.endpoint_url)
        kwargs["endpoint_override"] = endpoint.netloc + endpoint.path.rstrip("/")
        kwargs["scheme"] = endpoint.scheme or "https"
        kwargs["force_virtual_addressing"] = settings.addressing_style == "virtual"
    with _client_lock:
        creds = _cached_session(settings, os.getpid()).get_credentials()  # the chain boto3 resolves
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key)
        if frozen.token:
            kwargs["session_token"] = frozen.token
    else:
        kwargs["anonymous"] = True
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=settings.max_attempts)
    return pafs.S3FileSystem(**kwargs), f"{bucket}/{key}".rstrip("/")
