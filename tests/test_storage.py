"""fstrain.data.storage against a real S3 server (moto over HTTP) and a local directory, with the same tests."""
from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from fstrain.data import storage
from fstrain.data.storage import AccessDeniedError, BadURIError, NoSuchBucketError, NotFoundError, StorageError


def test_bytes_text_json_round_trip(storage_root):
    uri = storage.join(storage_root, "a", "b", "blob.bin")
    payload = bytes(range(256)) * 10
    storage.write_bytes(uri, payload)
    assert storage.read_bytes(uri) == payload
    assert storage.exists(uri) and storage.size(uri) == len(payload)
    storage.write_text(storage.join(storage_root, "t.txt"), "héllo")
    assert storage.read_text(storage.join(storage_root, "t.txt")) == "héllo"
    storage.write_json(storage.join(storage_root, "m.json"), {"k": [1, 2], "s": "x"})
    assert storage.read_json(storage.join(storage_root, "m.json")) == {"k": [1, 2], "s": "x"}
    # Overwrite replaces the whole object.
    storage.write_bytes(uri, b"short")
    assert storage.read_bytes(uri) == b"short"


def test_streaming_read(storage_root):
    uri = storage.join(storage_root, "stream.bin")
    payload = os.urandom(300_000)
    storage.write_bytes(uri, payload)
    chunks = []
    with storage.open_read(uri) as stream:
        while chunk := stream.read(65536):
            assert len(chunk) <= 65536
            chunks.append(chunk)
    assert len(chunks) >= 5 and b"".join(chunks) == payload


def test_upload_download_files(storage_root, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"file-content" * 1000)
    uri = storage.join(storage_root, "files", "x.bin")
    storage.upload_file(src, uri)
    dest = tmp_path / "out" / "x.bin"
    assert storage.download_file(uri, dest) == str(dest)
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(NotFoundError, match="local file to upload does not exist"):
        storage.upload_file(tmp_path / "missing.bin", uri)


def test_list_recursive_sorted_with_suffixes_and_directory_semantics(storage_root):
    names = ["d/b.tar", "d/a.tar", "d/sub/c.tar", "d/sub/c.json", "dz/other.tar", "top.tar"]
    for name in names:
        storage.write_bytes(storage.join(storage_root, name), name.encode())
    listed = storage.list_uris(storage.join(storage_root, "d"))
    assert listed == [storage.join(storage_root, n) for n in ["d/a.tar", "d/b.tar", "d/sub/c.json", "d/sub/c.tar"]]
    assert storage.list_uris(storage.join(storage_root, "d") + "/", suffixes=".tar") == [
        storage.join(storage_root, n) for n in ["d/a.tar", "d/b.tar", "d/sub/c.tar"]]
    assert len(storage.list_uris(storage_root)) == len(names)
    assert storage.list_uris(storage.join(storage_root, "nothing-here")) == []
    for uri in listed:  # every listed URI reads back as what was written there
        assert storage.read_bytes(uri).decode() == uri[len(storage_root) + 1:]


def test_exists_delete_and_delete_prefix(storage_root):
    uri = storage.join(storage_root, "gone.txt")
    assert not storage.exists(uri)
    storage.write_text(uri, "x")
    assert storage.exists(uri)
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # deleting a missing object is not an error (S3 semantics)
    for i in range(5):
        storage.write_text(storage.join(storage_root, "p", f"{i}.txt"), str(i))
    storage.write_text(storage.join(storage_root, "keep.txt"), "k")
    assert storage.delete_prefix(storage.join(storage_root, "p")) == 5
    assert storage.list_uris(storage_root) == [storage.join(storage_root, "keep.txt")]


def test_missing_key_errors_name_the_uri(storage_root):
    uri = storage.join(storage_root, "no", "such.bin")
    for call in (storage.read_bytes, storage.open_read, storage.size, lambda u: storage.download_file(u, "/tmp/x")):
        with pytest.raises(NotFoundError) as info:
            call(uri)
        assert str(info.value).startswith(f"{uri}: not found")
        assert info.value.uri == uri
        assert isinstance(info.value, StorageError) and isinstance(info.value, FileNotFoundError)


def test_atomic_local_write_leaves_no_partial_file(local_root, monkeypatch):
    uri = storage.join(local_root, "model.pt")
    storage.write_bytes(uri, b"old")

    class Boom(Exception):
        pass

    def failing_copy(src, dst):
        with open(dst, "wb") as f:
            f.write(b"half")
        raise Boom()

    monkeypatch.setattr(storage.shutil, "copyfile", failing_copy)
    src = os.path.join(local_root, "..", "src.bin")
    with open(src, "wb") as f:
        f.write(b"new")
    with pytest.raises(Boom):
        storage.upload_file(src, uri)
    assert storage.read_bytes(uri) == b"old"
    assert sorted(os.listdir(local_root)) == ["model.pt"]  # temp file removed


def test_listing_more_than_1000_keys(s3_server, s3_root):
    """S3 returns 1,000 keys a page: listing must follow continuation tokens."""
    client = s3_server.client()
    bucket, key = storage.parse_s3(s3_root)
    for i in range(1205):
        client.put_object(Bucket=bucket, Key=f"{key}/many/{i:05d}.txt", Body=b"")
    listed = storage.list_uris(storage.join(s3_root, "many"), suffixes=".txt")
    assert len(listed) == 1205
    assert listed[0].endswith("/00000.txt") and listed[-1].endswith("/01204.txt")
    assert listed == sorted(set(listed))


def test_listing_more_than_1000_local_files(local_root):
    many = os.path.join(local_root, "many")
    os.makedirs(many)
    for i in range(1205):
        open(os.path.join(many, f"{i:05d}.txt"), "wb").close()
    assert len(storage.list_uris(many)) == 1205


def test_multipart_upload_over_16_mib(s3_server, s3_root, tmp_path):
    payload = os.urandom(17 * 1024 * 1024 + 123)
    uri = storage.join(s3_root, "big", "blob.bin")
    storage.write_bytes(uri, payload)
    bucket, key = storage.parse_s3(uri)
    head = s3_server.client().head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(payload)
    assert head["ETag"].strip('"').endswith("-2")  # a multipart ETag: md5-of-md5s "-<parts>"
    assert storage.read_bytes(uri) == payload
    # A file upload goes the same way; a small one stays a single PUT.
    src = tmp_path / "big.bin"
    src.write_bytes(payload)
    storage.upload_file(src, storage.join(s3_root, "big", "file.bin"))
    head = s3_server.client().head_object(Bucket=bucket, Key=storage.parse_s3(storage.join(s3_root, "big", "file.bin"))[1])
    assert head["ETag"].strip('"').endswith("-2")
    storage.write_bytes(storage.join(s3_root, "small.bin"), b"x")
    head = s3_server.client().head_object(Bucket=bucket, Key=storage.parse_s3(storage.join(s3_root, "small.bin"))[1])
    assert "-" not in head["ETag"]


def test_missing_bucket_errors(s3_server):
    uri = "s3://no-such-bucket-fstrain/a/b.bin"
    for call in (storage.read_bytes, lambda u: storage.write_bytes(u, b"x"), storage.exists, storage.size,
                 lambda u: storage.list_uris("s3://no-such-bucket-fstrain/a"),
                 lambda u: storage.download_file(u, "/tmp/never")):
        with pytest.raises(NoSuchBucketError) as info:
            call(uri)
        assert "no such bucket 'no-such-bucket-fstrain'" in str(info.value)
        assert s3_server.endpoint_url in str(info.value)
        assert str(info.value).startswith("s3://no-such-bucket-fstrain")


def test_access_denied(s3_server, s3_root):
    """A real 403 from the server: a bucket policy that denies reads to everyone."""
    import json

    bucket, _ = storage.parse_s3(s3_root)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}]}
    uri = storage.join(s3_root, "secret.txt")
    storage.write_text(uri, "s")
    s3_server.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    with pytest.raises(AccessDeniedError) as info:
        storage.read_bytes(uri)
    assert str(info.value).startswith(f"{uri}: access denied")
    assert "testing" not in str(info.value)  # no credentials in messages


@pytest.mark.parametrize("uri, words", [
    ("s3:///key", "no bucket name"),
    ("gs://bucket/key", "unsupported scheme 'gs'"),
    ("http://host/key", "unsupported scheme 'http'"),
    ("", "empty path"),
])
def test_bad_uris(uri, words):
    with pytest.raises(BadURIError, match=words):
        storage.read_bytes(uri)


def test_bucket_or_prefix_is_not_an_object(s3_root):
    bucket, _ = storage.parse_s3(s3_root)
    with pytest.raises(BadURIError, match="not an object"):
        storage.write_bytes(f"s3://{bucket}", b"x")
    with pytest.raises(BadURIError, match="not an object"):
        storage.read_bytes(s3_root + "/")


def test_join_and_parse():
    assert storage.join("s3://b/root/", "/datasets", "x.tar") == "s3://b/root/datasets/x.tar"
    assert storage.join("/tmp/r", "a", "", "b") == "/tmp/r/a/b"
    assert storage.parse_s3("s3://b") == ("b", "")
    assert storage.parse_s3("s3://b/k/l.txt") == ("b", "k/l.txt")


def test_configure_s3_overrides_environment(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    try:
        settings = storage.configure_s3(endpoint_url=s3_server.endpoint_url, multipart_threshold=5 * 1024 * 1024)
        assert settings.endpoint_url == s3_server.endpoint_url and settings.multipart_threshold == 5 * 1024 * 1024
        assert "testing" not in repr(settings)  # secrets are not in reprs
        bucket = s3_server.new_bucket()
        storage.write_bytes(f"s3://{bucket}/k", b"v")
        assert storage.read_bytes(f"s3://{bucket}/k") == b"v"
    finally:
        storage.configure_s3(reset=True)
    assert storage.s3_settings().endpoint_url == "http://127.0.0.1:9"
    storage.configure_s3(max_attempts=1)
    try:
        with pytest.raises(StorageError, match=r"cannot connect to S3 endpoint http://127\.0\.0\.1:9"):
            storage.read_bytes("s3://any/k")
    finally:
        storage.configure_s3(reset=True)


def test_environment_reaches_subprocesses(s3_root):
    """A child process (like a Ray worker) finds the same server through the inherited environment."""
    uri = storage.join(s3_root, "from-child.txt")
    code = f"from fstrain.data import storage; storage.write_text({uri!r}, 'child')"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert storage.read_text(uri) == "child"


def test_pyarrow_filesystem(storage_root):
    storage.write_bytes(storage.join(storage_root, "pa", "one.bin"), b"1234")
    fs, path = storage.pyarrow_filesystem(storage.join(storage_root, "pa"))
    if storage.is_s3(storage_root):
        assert isinstance(fs, pafs.S3FileSystem)
        assert path == storage.parse_s3(storage_root)[0] + "/root/pa"
    else:
        assert isinstance(fs, pafs.LocalFileSystem)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    assert [(i.base_name, i.size) for i in infos] == [("one.bin", 4)]
    with fs.open_output_stream(path + "/two.bin") as out:
        out.write(b"from-pyarrow")
    assert storage.read_bytes(storage.join(storage_root, "pa", "two.bin")) == b"from-pyarrow"


# ------------------------------------------------------------------------------------------ keys are data
# Legal S3 keys that a URL parser would mangle: fragment and query marks, escapes, '+', spaces, quotes, non-ASCII.
ODD_NAMES = ["album/IMG #3.jpg", "q?x=1&y=2.jpg", "100%25 pure %.jpg", "a+b = c.jpg", "two  spaces .jpg",
             "it's \"quoted\".jpg", "ünïcødé/名前 φωτο.jpg", "semi;colon,comma:@$!.jpg"]


def test_parse_s3_takes_the_key_as_data():
    for name in ODD_NAMES + ["a//b", "/lead", "dot/../x"]:
        assert storage.parse_s3(f"s3://bkt/{name}") == ("bkt", name)
        assert storage.parse_s3(storage.join("s3://bkt/root", name)) == ("bkt", "root/" + name.lstrip("/"))
    assert storage.dirname("s3://bkt/album/IMG #3.jpg") == "s3://bkt/album"


@pytest.mark.parametrize("long_name", [False, True])
def test_odd_keys_write_list_read_delete(storage_root, long_name):
    names = list(ODD_NAMES)
    if long_name:  # S3 allows 1024 bytes of key; a local file name 255 bytes
        names = ["d/" + "ł" * 490 + ".jpg"] if storage.is_s3(storage_root) else ["d/" + "x" * 250 + ".jpg"]
    folder = storage.join(storage_root, "odd")
    for name in names:
        storage.write_bytes(storage.join(folder, name), name.encode())
    listed = storage.list_uris(folder, suffixes=".jpg")
    assert listed == sorted(storage.join(folder, name) for name in names)
    for uri in listed:
        name = uri[len(folder) + 1:]
        assert storage.read_bytes(uri) == name.encode()
        assert storage.exists(uri) and storage.size(uri) == len(name.encode())
        with storage.open_read(uri) as stream:
            assert stream.read() == name.encode()
    if storage.is_s3(storage_root):  # the objects carry exactly these keys (no URL-decoding on the way)
        bucket, prefix = storage.parse_s3(folder)
        client = storage.s3_client()
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]]
        assert sorted(keys) == sorted(f"{prefix}/{name}" for name in names)
    for uri in listed[: len(listed) // 2]:
        storage.delete(uri)
        assert not storage.exists(uri)
    assert storage.delete_prefix(folder) == len(listed) - len(listed) // 2
    assert storage.list_uris(folder) == []


# ------------------------------------------------------------------- faults between the client and S3
from support.fault_proxy import FaultProxy, fault_proxy  # noqa: E402,F401 - the fixture, for this module


@pytest.fixture
def via_proxy(s3_root, fault_proxy):
    """Storage calls of this process go through the fault proxy (3 attempts each), for one test."""
    storage.configure_s3(endpoint_url=fault_proxy.url, max_attempts=3)
    try:
        yield fault_proxy
    finally:
        storage.configure_s3(reset=True)


@pytest.mark.parametrize("kind", ["reset-before", "reset-during", "reset-after", "truncate", "slowdown"])
def test_read_survives_a_fault_within_the_retry_policy(s3_root, via_proxy, kind, tmp_path):
    uri = storage.join(s3_root, "album", "IMG #3.jpg")
    payload = os.urandom(200_000)
    storage.write_bytes(uri, payload)
    via_proxy.add(kind, method="GET", path_contains="IMG #3.jpg", times=2)   # two failures, third try succeeds
    assert storage.read_bytes(uri) == payload
    if kind == "reset-after":
        # The whole body is sent before the reset: whether the client reads it before the RST lands is a race, so
        # the first GET may already succeed (one fault fired) or fail twice and succeed on the third try.
        assert via_proxy.kinds_injected() in ([kind], [kind, kind])
    else:
        assert via_proxy.kinds_injected() == [kind, kind]
    via_proxy.clear()
    via_proxy.add(kind, method="GET", path_contains="IMG #3.jpg", times=1)
    target = storage.download_file(uri, tmp_path / "copy.jpg")
    with open(target, "rb") as f:
        assert f.read() == payload


@pytest.mark.parametrize("kind", ["reset-before", "reset-during", "truncate", "slowdown"])
def test_read_failing_past_the_retries_is_transient_and_names_the_key(s3_root, via_proxy, kind):
    uri = storage.join(s3_root, "album", "IMG #3.jpg")
    storage.write_bytes(uri, os.urandom(50_000))
    via_proxy.add(kind, method="GET", path_contains="IMG #3.jpg", times=50)
    with pytest.raises(StorageError) as info:
        storage.read_bytes(uri)
    assert info.value.transient and isinstance(info.value, storage.TransientStorageError), info.value
    assert str(info.value).startswith(f"{uri}: ")
    assert "testing" not in str(info.value)
    assert 3 <= len(via_proxy.injected) <= 6   # the policy's 3 attempts (a resumed read may need its first GET)


@pytest.mark.parametrize("kind", ["reset-before", "reset-during", "slowdown"])   # reset-after: see the read test
def test_write_and_list_survive_faults_and_fail_transient_past_the_retries(s3_root, via_proxy, kind):
    uri = storage.join(s3_root, "out", "a+b = c.jpg.png")
    via_proxy.add(kind, method="PUT", times=2)
    storage.write_bytes(uri, b"picture")
    via_proxy.add(kind, method="GET", query_contains="list-type", times=2)
    assert storage.list_uris(storage.join(s3_root, "out")) == [uri]
    assert via_proxy.kinds_injected() == [kind] * 4
    via_proxy.add(kind, method="PUT", times=50)
    with pytest.raises(StorageError) as info:
        storage.write_bytes(uri, b"again")
    assert info.value.transient, info.value
    # Never a partial object: the old one, or the new one when only the answer was lost.
    assert storage.read_bytes(uri) in ((b"picture",) if kind in ("reset-before", "slowdown") else (b"picture", b"again"))


def test_errors_of_the_request_are_not_transient(s3_root, via_proxy):
    with pytest.raises(NotFoundError) as info:
        storage.read_bytes(storage.join(s3_root, "no such #key"))
    assert not info.value.transient
    assert via_proxy.injected == []
