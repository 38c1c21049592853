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
