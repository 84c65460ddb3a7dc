"""The command line of ``train.py``: absl flag parsing with one clear message, and the offline data folder.

``train.py`` reads its config with ``config_flags.DEFINE_config_file`` and runs
``app.run(main, flags_parser=jaxlora.training.flags_parser)``: a bad ``--config.x.y=...`` override or a config
file that fails to load is one ``FATAL`` line and exit status 2, never an ml_collections traceback. Config files
that read GLUE from disk take their folder from :func:`glue_dir_default`.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from jaxlora.training import config as config_lib

__all__ = ["flags_parser", "glue_dir_default"]


def _override_paths(argv: Sequence[str], flag: str) -> list[tuple[str, str]]:
    prefix = f"--{flag}."
    found = []
    for arg in argv:
        if arg.startswith(prefix):
            found.append((arg.split("=", 1)[0][2:], arg))
    return found


def flags_parser(argv: Sequence[str], flag: str = "config") -> list[str]:
    """absl ``flags_parser`` that turns a bad ``--config.x.y=...`` override into one clear message.

    ml_collections reports an unknown override as a bare ``AttributeError: 'x'`` with a traceback;
    this names the flag, the field and the fields that exist, then exits with status 2.

    ``train.py`` runs its ``main`` with ``app.run(main, flags_parser=jaxlora.training.flags_parser)``.
    """
    from absl import flags

    try:
        remaining = flags.FLAGS(list(argv))
        # A config file that raised an OSError while loading is replaced by a placeholder that
        # raises on first use: touch it here so the error surfaces now, as one message.
        flags.FLAGS[flag].value.keys()
        return remaining
    except (OSError, ValueError) as err:
        # A config file that fails to load (a missing GLUE_DIR, an unknown ':option'): its own message.
        text = str(err).replace("Configuration is not available because of an earlier failure to load: ", "")
        sys.stderr.write(f"FATAL: cannot load --{flag}: {text}\n")
        sys.exit(2)
    except (AttributeError, KeyError) as err:
        import re

        text = str(err)
        name_match = re.search(r"[A-Za-z_][A-Za-z0-9_]*", text)
        name = name_match.group(0) if name_match else text
        suggestion = re.search(r'Did you mean \W*"?(\w+)', text)
        culprits = [arg for path, arg in _override_paths(argv, flag) if name in path.split(".")]
        culprit = culprits[0] if culprits else f"--{flag}.{name}"
        hint = f"Did you mean {suggestion.group(1)!r}? " if suggestion else ""
        if name in config_lib.moved_options():
            hint = f"Variant options have their own block now: use --{flag}.lora.{config_lib.moved_options()[name]}=... "
        sys.stderr.write(
            f"FATAL: unknown config field in {culprit!r}: {name!r} is not a field of that config. {hint}"
            "The fields are listed in jaxlora/training/config.py (default_config) and set in configs/glue.py.\n"
        )
        sys.exit(2)
    except flags.Error as err:
        text = str(err)
        if "Error whilst parsing config file" in text:  # the config file raised: keep its last line
            text = f"cannot load --{flag}: " + [line for line in text.splitlines() if line.strip()][-1]
        sys.stderr.write(f"FATAL flags parsing error: {text}\n")
        sys.exit(2)


def glue_dir_default(repo_root: str | os.PathLike) -> str:
    """$GLUE_DIR, else ``<repo>/../shared/data/glue`` when it exists; otherwise a clear error.

    >>> import tempfile
    >>> from unittest import mock
    >>> folder = os.path.realpath(tempfile.mkdtemp())
    >>> with mock.patch.dict(os.environ, {"GLUE_DIR": folder}):
    ...     glue_dir_default("/any/repo") == folder
    True
    """
    value = os.environ.get("GLUE_DIR", "")
    if value:
        if not os.path.isdir(value):
            raise FileNotFoundError(
                f"GLUE_DIR={value!r} is not a folder. Point GLUE_DIR at the folder that holds the GLUE task "
                "folders (e.g. $GLUE_DIR/SST-2/train.tsv)."
            )
        return os.path.abspath(value)
    fallback = os.path.abspath(os.path.join(os.fspath(repo_root), "..", "shared", "data", "glue"))
    if os.path.isdir(fallback):
        return fallback
    raise FileNotFoundError(
        f"The offline config reads GLUE files from $GLUE_DIR, which is not set, and the default {fallback!r} "
        "does not exist. Set GLUE_DIR to the folder that holds the GLUE task folders "
        "(e.g. export GLUE_DIR=/data/glue with /data/glue/SST-2/train.tsv)."
    )


