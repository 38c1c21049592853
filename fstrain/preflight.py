"""Checks every command runs before it reads its first image or schedules its first task.

    preflight.input_exists(args.src, "SRC")          # a misspelt folder: "does not exist", not "no images"
    preflight.storage_usable(root, "--root", write=True)   # missing bucket, bad credentials, wrong endpoint
    preflight.models_exist(config, root, ["base_generator", ...], config_path)   # files named by the config
    preflight.ray_reachable(address)                 # RAY_ADDRESS / --ray-address answers

Each failure raises `fstrain.cli.UsageError` (exit status 2) with one or two lines naming what was wrong and what to
do. Storage access itself is `fstrain.data.storage.check_access`; model URIs resolve through fstrain.models.hub.
"""
from __future__ import annotations

import difflib
import os
import socket
from typing import Iterable
from urllib.parse import urlparse

from fstrain import layout
from fstrain.cli import UsageError
from fstrain.data import storage

RAY_CONNECT_TIMEOUT_S = 5.0


def storage_usable(uri: str, flag: str, *, write: bool) -> bool:
    """The folder/prefix can be listed (and written when `write`); returns whether anything is there yet."""
    try:
        return storage.check_access(uri, write=write)
    except storage.NotFoundError:
        raise UsageError(f"{flag} {uri}: does not exist; check the path") from None
    except storage.StorageError as exc:
        raise UsageError(f"{flag}: {exc}") from None    # storage's messages say what to do


def input_exists(uri: str, flag: str) -> None:
    """An input file or folder/prefix exists (an empty folder is left to the command, which names what it needs)."""
    if not storage.is_s3(uri):
        if not os.path.exists(uri):
            raise UsageError(f"{flag} {uri}: does not exist; check the path")
        return
    if not storage_usable(uri, flag, write=False):
        try:
            if storage.exists(uri):   # a single object rather than a prefix
                return
        except storage.StorageError:
            pass
        raise UsageError(f"{flag} {uri}: does not exist (nothing under this prefix); check the URI")


def models_exist(config, root: str, keys: Iterable[str], config_path: str) -> None:
    """Each `models.<key>` of the config names an existing file (resolved as fstrain.models.hub resolves it)."""
    from fstrain.models.hub import ModelHub
    from fstrain.models.registry import MissingWeightsError

    hub = ModelHub(config.models, root)
    for key in keys:
        try:
            uri = hub.uri(key)
        except MissingWeightsError as exc:
            raise UsageError(f"{config_path}: {exc}") from None
        if "://" in uri and not storage.is_s3(uri):
            continue                           # http(s) and other schemes are fetched later by the registry
        try:
            found = storage.exists(uri)
        except storage.StorageError as exc:
            raise UsageError(f"{config_path}: models.{key}: {exc}") from None
        if not found:
            raise UsageError(f"{config_path}: models.{key}: {uri} does not exist; fix models.{key} (relative paths are "
                             f"under --root {root}) or create the models (python -m fstrain.models.init)")


def ray_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address as RAY_ADDRESS spells it: `host:6379`, `ray://host:10001`,
    `http://host:8265`; None for `auto`/`local`, which name no endpoint to probe."""
    if address in ("auto", "local", ""):
        return None
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if not parsed.hostname:
        return None
    default = {"http": 80, "https": 443, "ray": 10001}.get(parsed.scheme, 6379)
    return parsed.hostname, parsed.port or default


def ray_reachable(address: str, source: str) -> None:
    """A TCP connection to the Ray address opens, so a wrong RAY_ADDRESS fails now, not after a long connect."""
    target = ray_host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"Ray at {address} (from {source}) is not reachable: {reason}\n"
                         f"start the cluster or fix {source}") from None


def dataset_exists(root: str, style: str, flag: str = "--style") -> None:
    """`<root>/datasets/<style>/` holds shards; otherwise name the styles that do (with a did-you-mean)."""
    prefix = layout.dataset(root, style)
    try:
        if storage.list_uris(prefix, suffixes=".tar"):
            return
        found = sorted({storage.basename(storage.dirname(uri)) for uri in
                        storage.list_uris(storage.dirname(prefix), suffixes=".tar")})
    except storage.StorageError as exc:
        raise UsageError(f"--root: {exc}") from None
    close = difflib.get_close_matches(style, found, n=1)
    hint = (f"did you mean {close[0]!r}? " if close else "") + \
        (f"datasets here: {', '.join(found)}" if found else "no datasets here yet")
    raise UsageError(f"{flag} {style}: no dataset at {prefix} ({hint})\n"
                     f"ingest one first: python -m fstrain.ingest IMAGES {root} --style {style} --size N")


def published_generators_exist(root: str, styles: Iterable[str], overrides: dict[str, str] | None = None,
                               flag: str = "--styles") -> None:
    """Each style has a G' (`--generator STYLE=URI`, else `<root>/styles/<style>/generator.pt`); an unknown style
    gets a did-you-mean among the published ones."""
    overrides = overrides or {}
    for style in styles:
        uri = overrides.get(style) or layout.published_generator(root, style)
        try:
            found = storage.exists(uri)
        except storage.StorageError as exc:
            raise UsageError(f"{flag}: {exc}") from None
        if found:
            continue
        if style in overrides:
            raise UsageError(f"--generator {style}={uri}: does not exist; fix the URI")
        try:
            published = layout.published_styles(root)
        except storage.StorageError:
            published = []
        close = difflib.get_close_matches(style, published, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(f"{flag}: style {style!r} has no published G' at {uri} ({hint}published: "
                         f"{', '.join(published) or 'none'})\npublish it with cluster.train or pass --generator "
                         f"{style}=URI")
