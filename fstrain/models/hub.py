"""The model hub: every stage gets its networks here, by config key or by URI.

    hub = ModelHub(config.models, root)
    hub.generator()                    # models.base_generator (which: models.base_generator_which, default g_ema)
    hub.generator_at(uri)              # any other generator file: G*, a published style, a run checkpoint
    hub.encoder("encoder_wplus")       # pSp or e4e W+ encoder; "encoder_zplus" gives the Z+ encoder
    hub.identity(), hub.lpips(), hub.sha256("base_generator"), hub.path("identity")
    encoder_at(uri), identity_at(uri), lpips_at(uri), reader_at(uri), file_sha256(uri)
                                       # networks named by URI outside `models` (a study's evaluation nets, a run's G*)

Each call: resolve the URI (no scheme and no leading "/" = relative to the root) -> fetch once per machine
(`registry.fetch`: cache, file lock, sha256 pin from `models.sha256`) -> detect the format (`formats`: torch zip,
legacy torch, NVIDIA pickle) -> load strictly (`checkpoints`, `nvidia_pkl`, `psp`, `identity`, `perceptual`).
Errors keep their types and gain the config key: "models.base_generator: <uri>: <what is wrong and what to do>".
A new file format is one reader in `formats`; a new kind of network is one method here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from torch import nn

from fstrain.data import storage
from fstrain.models import registry
from fstrain.models.checkpoints import CheckpointError, LoadedGenerator, load_generator

SPACES = {"encoder_wplus": "w+", "encoder_zplus": "z+"}
T = TypeVar("T")


def resolve_uri(uri: str, root: str) -> str:
    """A config's model URI made absolute: schemed (`s3://`, `file://`) and `/...` URIs as given, others under root."""
    uri = str(uri or "")
    if not uri or not root or uri.startswith("/") or "://" in uri:
        return uri
    return storage.join(root, uri)


def file_sha256(uri: str, sha256: str | None = None) -> str:
    """sha256 of a model file at any URI (fetched once per machine, verified against `sha256` when given)."""
    return registry.sha256_file(registry.fetch(uri, sha256))


def _sidecar(uri: str) -> dict[str, Any] | None:
    """The `<uri>.json` metadata of a remote generator (fetched and cached like the file), None when local or
    absent (a local sidecar is read beside the file)."""
    if not registry.is_remote(uri):
        return None
    try:
        path = registry.fetch(uri + ".json")
    except registry.MissingWeightsError:
        return {}
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{uri}.json: metadata sidecar is not valid JSON ({exc}); fix or delete it") from None


def generator_at(uri: str, sha256: str | None = None, *, which: str = "g_ema", load_discriminator: bool = True,
                 expected_size: int | None = None, size_setting: str = "the configured size",
                 map_location: Any = "cpu") -> LoadedGenerator:
    """Fetch (cached, locked, verified) and strictly load any generator file; errors name `uri`, not the cache."""
    path = registry.fetch(uri, sha256)
    return load_generator(str(path), which=which, load_discriminator=load_discriminator, expected_size=expected_size,
                          size_setting=size_setting, label=str(uri), metadata=_sidecar(str(uri)),
                          map_location=map_location)


def encoder_at(uri: str, space: str | None = None, sha256: str | None = None, device: Any = "cpu") -> nn.Module:
    """A frozen pSp / e4e encoder from any URI (`space` "w+" / "z+"; None reads the checkpoint's opts)."""
    from fstrain.models.psp import load_encoder
    return load_encoder(uri, space=space, sha256=sha256, device=device)


def identity_at(uri: str, kind: str = "auto", sha256: str | None = None, device: Any = "cpu") -> nn.Module:
    """A frozen identity net (arcface_torch backbone or pSp IR-SE50) from any URI."""
    from fstrain.models.identity import load_identity
    return load_identity(uri, kind=kind, sha256=sha256, device=device)


def lpips_at(uri: str, net: str = "vgg", sha256: str | None = None, device: Any = "cpu") -> nn.Module:
    """A frozen LPIPS whose trunk (torchvision VGG16 / AlexNet state dict) is read from any URI."""
    from fstrain.models.perceptual import load_lpips
    return load_lpips(uri, net=net, sha256=sha256, device=device)


def reader_at(uri: str, sha256: str | None = None, device: Any = "cpu") -> nn.Module:
    """The world's image reader (attribute heads) at any URI."""
    from fstrain.models.reader import load_reader
    return load_reader(uri, sha256=sha256, device=device)


class ModelHub:
    """The networks a configuration names (`models` section: URIs, `sha256` pins, kinds) under one root."""

    def __init__(self, models: Any, root: str = ""):
        self.models = models
        self.root = root

    def _pin(self, key: str) -> str | None:
        pins: Mapping[str, str] = getattr(self.models, "sha256", None) or {}
        return pins.get(key)

    def uri(self, key: str) -> str:
        value = getattr(self.models, key, None)
        if not value:
            raise registry.MissingWeightsError(f"models.{key} is empty in the config; set it to the model's path or "
                                               f"URI")
        return resolve_uri(value, self.root)

    def _keyed(self, key: str, load: Callable[[], T]) -> T:
        try:
            return load()
        except (registry.WeightsMismatchError, FileNotFoundError, ValueError) as exc:
            message = str(exc)
            if message.startswith(f"models.{key}"):
                raise
            try:
                error = type(exc)(f"models.{key}: {message}")
            except TypeError:  # an exception type that does not take one message
                raise exc from None
            raise error from None

    def path(self, key: str) -> Path:
        """Local path of a configured model (fetched once per machine, verified against its pin)."""
        return self._keyed(key, lambda: registry.fetch(self.uri(key), self._pin(key)))

    def sha256(self, key: str) -> str:
        return registry.sha256_file(self.path(key))

    def generator(self, key: str = "base_generator", *, which: str | None = None, load_discriminator: bool = True,
                  expected_size: int | None = None, size_setting: str = "data.image_size",
                  map_location: Any = "cpu") -> LoadedGenerator:
        which = which or getattr(self.models, f"{key}_which", None) or "g_ema"
        return self._keyed(key, lambda: generator_at(
            self.uri(key), self._pin(key), which=which, load_discriminator=load_discriminator,
            expected_size=expected_size, size_setting=size_setting, map_location=map_location))

    def generator_at(self, uri: str, sha256: str | None = None, **kwargs: Any) -> LoadedGenerator:
        return generator_at(resolve_uri(uri, self.root), sha256, **kwargs)

    def encoder(self, key: str = "encoder_wplus", device: Any = "cpu") -> nn.Module:
        """A frozen PSPEncoder (pSp GradualStyleEncoder or e4e Encoder4Editing) for W+ or Z+ codes."""
        if key not in SPACES:
            raise ValueError(f"encoder key must be one of {sorted(SPACES)}; got {key!r}")
        return self._keyed(key, lambda: encoder_at(self.uri(key), SPACES[key], self._pin(key), device))

    def identity(self, device: Any = "cpu") -> nn.Module:
        kind = getattr(self.models, "identity_kind", "auto")
        return self._keyed("identity", lambda: identity_at(self.uri("identity"), kind, self._pin("identity"), device))

    def lpips(self, device: Any = "cpu") -> nn.Module:
        net = getattr(self.models, "lpips_net", "vgg")
        return self._keyed("lpips_backbone", lambda: lpips_at(self.uri("lpips_backbone"), net,
                                                              self._pin("lpips_backbone"), device))
