"""Names of a batch job's outputs: one input key -> one output name, never shared by two inputs.

An input's key is its path relative to the --input prefix, exactly as listed (`dup/a.jpg`, `album/IMG #3.jpg`).
Its output name is that same path, extension kept, so a user can tell at a glance which input an output came from:

    <out>/<style>/<name>.<format>         (multimodal: <name>_<i>.<format>)
    <out>/latents/<name>.npz
    <out>/_gallery/<column>/<name>.jpg

The name is the key with only what a store cannot hold escaped, as %XX (so `%` itself becomes `%25`):
control characters, a `.` or `..` path segment, an empty segment (`a//b`: `a/%2F/b`), and the last `.` of a
folder segment that ends like an output file (`x.png/` -> `x%2Epng/`, so a folder never has the name of a file
written beside it). Every escape is decodable, so two keys never share a name. A key too long for a file system
(a segment over 200 bytes, or over 800 bytes in all) is cut and given `%~` and 12 hex digits of the key's sha256;
`%~` appears in no other name, so shortened names stay distinct too.
"""
from __future__ import annotations

import hashlib

MAX_SEGMENT_BYTES = 200    # file systems allow 255 per name; room for "_<i>.webp" and the like
MAX_NAME_BYTES = 800       # S3 allows 1024 bytes of key; room for the output prefix and style folder
HASH_MARK = "%~"
# Endings of files the job writes; a folder segment ending so gets its last '.' escaped.
WRITTEN_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".npz")


def _escape_char(char: str) -> str:
    if char == "%" or ord(char) < 0x20 or ord(char) == 0x7F:
        return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return char


def _escape_segment(segment: str, is_folder: bool) -> str:
    if segment == "":
        return "%2F"
    if segment in (".", ".."):
        return "%2E" * len(segment)
    escaped = "".join(_escape_char(c) for c in segment)
    if is_folder and escaped.lower().endswith(WRITTEN_SUFFIXES):
        head, _, tail = escaped.rpartition(".")
        escaped = f"{head}%2E{tail}"
    return escaped


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` within `max_bytes` UTF-8 bytes that does not split a %XX escape."""
    out = text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
    cut_at = out.rfind("%")
    if cut_at >= len(out) - 2 and cut_at != -1:
        out = out[:cut_at]
    return out


def output_name(key: str) -> str:
    """The output name of input key `key` (see the module docstring); injective over all keys."""
    segments = key.split("/")
    escaped = [_escape_segment(s, i < len(segments) - 1) for i, s in enumerate(segments)]
    too_long = any(len(s.encode("utf-8")) > MAX_SEGMENT_BYTES for s in escaped)
    if not too_long and len("/".join(escaped).encode("utf-8")) <= MAX_NAME_BYTES:
        return "/".join(escaped)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    last = escaped[-1]
    dot = last.rfind(".")
    extension = last[dot:] if 0 < dot and len(last) - dot <= 8 else ""
    folders = [_cut(s, 60) + HASH_MARK if len(s.encode("utf-8")) > MAX_SEGMENT_BYTES else s for s in escaped[:-1]]
    folder_path = _cut("".join(f + "/" for f in folders), MAX_NAME_BYTES - 120)
    folder_path = folder_path[: folder_path.rfind("/") + 1]   # whole folders only ("" when none fit)
    stem = _cut(last[: len(last) - len(extension)], 80)
    return f"{folder_path}{stem}{HASH_MARK}{digest}{extension}"
