"""One exit-code rule and one error style for every command (`fstrain …`, `fstrain-cluster …`, `fstrain-batch`).

    0  done
    1  the work failed (a stage, the storage mid-run, a bug)
    2  usage or configuration error: a bad flag or config value, an input that does not exist, storage, a model
       file or a Ray cluster that cannot be reached; found before any work (fstrain.preflight)
    3  (batch) finished, with per-item errors recorded in the manifest

A refusal is one or two lines on stderr (`error: …`) and no traceback; `--debug` (or FSTRAIN_DEBUG=1) shows it.
Each entry point's `main(argv) -> int` is wrapped once: `sys.exit(run_command(main))`.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ITEM_ERRORS = 3
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """The command line, the config or the environment it names is wrong; the message says what to do."""


def add_debug_flag(parser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _usage_errors() -> tuple[type[BaseException], ...]:
    from fstrain.config import ConfigError   # local import: keeps `fstrain --help` light

    return UsageError, ConfigError


def _say(lines: str) -> None:
    print(f"error: {lines}", file=sys.stderr, flush=True)


def run_command(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run an entry point's main under the exit-code rule."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("FSTRAIN_DEBUG") == "1"
    try:
        code = main(argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):      # argparse (2) or an explicit exit status
            return exc.code or EXIT_OK
        _say(str(exc.code))                                   # SystemExit("message"): a refusal of bad input
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _usage_errors() as exc:
        if debug:
            raise
        _say(str(exc))
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, the traceback behind --debug
        if debug:
            raise
        text = str(exc).strip().splitlines()
        from fstrain.data.storage import StorageError

        name = "" if isinstance(exc, StorageError) else f"{type(exc).__name__}: "
        _say(f"{name}{text[-1] if text else ''}\n(the work failed; run again with --debug for the traceback)")
        return EXIT_FAILED
    return EXIT_OK if code is None else int(code)


def dispatch(commands: dict[str, str], prog: str, argv: Sequence[str] | None = None) -> int:
    """`prog COMMAND [args]`: run the module `commands[COMMAND]`'s main under the exit-code rule."""
    argv = list(sys.argv[1:] if argv is None else argv)
    names = " | ".join(commands)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} {{{names}}} [args]   ({prog} COMMAND --help for one command's flags)\n"
              f"exit status: 0 done, 1 the work failed, 2 usage or configuration error, "
              f"3 finished with per-item errors (batch)", file=sys.stdout if argv else sys.stderr)
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] not in commands:
        import difflib

        close = difflib.get_close_matches(argv[0], list(commands), n=1)
        _say(f"{prog}: unknown command {argv[0]!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
             f"use one of {names}")
        return EXIT_USAGE
    module = importlib.import_module(commands[argv[0]])
    return run_command(module.main, argv[1:])


FSTRAIN_COMMANDS = {"ingest": "fstrain.ingest", "train": "fstrain.train.__main__", "pairs": "fstrain.pairs.__main__",
                    "stylize": "fstrain.stylize.__main__", "evaluate": "fstrain.evaluate.__main__"}


def fstrain_main() -> int:
    """The `fstrain` console script: `fstrain ingest|train|pairs|stylize|evaluate …`."""
    return dispatch(FSTRAIN_COMMANDS, "fstrain")
