"""The errors every model reader raises, and the wording they share (one module below all readers, so the
registry, the format sniffer and the NVIDIA pickle reader need not import each other for them)."""
from __future__ import annotations

EXPECTED = "a PyTorch checkpoint (.pt/.pth) or an NVIDIA stylegan2-ada-pytorch network pickle (.pkl)"


class MissingWeightsError(FileNotFoundError):
    """A weights file named in config does not exist; the message names the URI and how to supply it."""


class ChecksumError(ValueError):
    """A weights file does not have the sha256 its config pins."""


class WeightsMismatchError(ValueError):
    """A weights file loaded but its keys or shapes do not fit the network; the message names the keys."""


class CheckpointError(WeightsMismatchError, RuntimeError):
    """A model file is unreadable, unsafe, of an unsupported kind or does not fit; one line naming file and fix."""


def refused_message(uri: str, what: str) -> str:
    return (f"{uri}: refused: the file asks to run or build '{what}', which no supported model format contains; "
            f"nothing from it was executed. Expected {EXPECTED} holding only tensors, numbers and dicts.")
