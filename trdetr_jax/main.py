r"""Trains and evaluates TR-DETR.

Kept short on purpose (as the flax examples' ``main.py``): flags, logging, one call into
:func:`trdetr_jax.train.train_and_evaluate`.

    python -m trdetr_jax.main                                   # built-in demo dataset
    python -m trdetr_jax.main --config=configs/charades_i3d.py \
        --config.data.feature_root=/data/charades --workdir=workdir/charades_i3d

``--config`` defaults to ``configs/demo.py`` of this source tree (found relative to the
package, so the default works from any current directory); ``--workdir`` defaults to
``workdir/<config file name>`` in the current directory. Rerunning the same command with the
same ``--workdir`` resumes the run.
"""

from __future__ import annotations

import logging as stdlib_logging
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# configs/ sits beside the package in the source tree (found from any current directory);
# a non-editable install has no source tree: then ./configs/demo.py is tried.
_SOURCE_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py"
DEFAULT_CONFIG = _SOURCE_CONFIG if _SOURCE_CONFIG.exists() else pathlib.Path("configs/demo.py")

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", None, "Run directory (checkpoints, logs, predictions). Default: workdir/<config>."
)
flags.DEFINE_bool("traceback", False, "Show the traceback of errors (default: one line).")


class _OwnInfoOnly(stdlib_logging.Filter):
    def filter(self, record: stdlib_logging.LogRecord) -> bool:
        return record.levelno >= stdlib_logging.WARNING or _PACKAGE_DIR in record.pathname


_PACKAGE_DIR = str(pathlib.Path(__file__).resolve().parent)


def default_workdir(config_path: str) -> str:
    name = pathlib.Path(config_path.split(":", 1)[0]).stem
    return str(pathlib.Path("workdir") / name)


def _innermost(e: BaseException) -> BaseException:
    """ml_collections wraps a KeyError (whose text has the "did you mean") in an
    AttributeError, which absl wraps again."""
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    return e


def flag_error_line(e: BaseException, argv: list[str]) -> str:
    """One line for a command-line error: the flag, what is wrong, the suggestion."""
    inner = _innermost(e)
    text = inner.args[0] if inner.args and isinstance(inner.args[0], str) else str(inner)
    text = " ".join(text.split())
    if isinstance(inner, (KeyError, AttributeError)):
        name = text.split()[0].strip("'\"") if text else ""
        culprit = next(
            (a for a in argv if a.startswith("--config.") and f".{name}" in a.split("=")[0]),
            "--config",
        )
        rest = text[len(text.split()[0]) :].strip() if text else ""
        hint = f"; {rest[0].lower()}{rest[1:]}" if rest else ""
        return f"{culprit}: no config field {name!r}{hint}"
    return text


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with command-line mistakes reported in one line (status 2)."""
    try:
        return FLAGS(argv)
    except Exception as e:  # noqa: BLE001 (absl / ml_collections raise several kinds)
        if "--traceback" in argv:
            raise
        print(f"error: {flag_error_line(e, argv)}", file=sys.stderr)
        sys.exit(2)


def error_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return str(e)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    # Libraries (Orbax: several lines per checkpoint) log at INFO too; keep their warnings
    # and errors, and this package's INFO lines.
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    from trdetr_jax import errors, train
    from trdetr_jax.data import DataError
    from trdetr_jax.evaluation import EvalInputError

    workdir = FLAGS.workdir or default_workdir(FLAGS["config"].config_filename)
    try:
        train.train_and_evaluate(FLAGS.config, workdir)
    except (errors.NonFiniteLossError, errors.RunError, DataError, EvalInputError, OSError) as e:
        # Errors the user acts on (bad data or settings, a diverged run, an unwritable
        # folder): one clear line on stderr, no traceback unless --traceback.
        if FLAGS.traceback:
            raise
        print(f"error: {error_line(e)}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        if FLAGS.traceback:
            raise
        # Checkpoints are written whole or not at all: the last one is intact.
        print(
            f"interrupted: rerun the same command (--workdir={workdir}) to resume from its "
            "last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(130)


def config_path_arg(argv: list[str]) -> str | None:
    """The ``--config`` file of ``argv`` (``--config=F`` or ``--config F``), without a
    ``:arg`` suffix; None when not given."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            value = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        return value.split(":", 1)[0]
    return None


def define_flags(argv: list[str]) -> None:
    """``--config``; ml_collections applies the ``--config.a.b=value`` overrides of
    ``argv`` while defining it, so a mistyped key fails here: one line (status 2), as does
    a config file that does not exist."""
    path = config_path_arg(argv)
    if path is not None and not pathlib.Path(path).is_file():
        print(f"error: --config: no such file: {path}", file=sys.stderr)
        sys.exit(2)
    try:
        config_flags.DEFINE_config_file(
            "config",
            str(DEFAULT_CONFIG),
            "Training configuration file (a configs/*.py); override fields with "
            "--config.a.b=value.",
            lock_config=True,
        )
    except Exception as e:  # noqa: BLE001 (KeyError, AttributeError, ValueError, flags.Error)
        if "--traceback" in argv:
            raise
        print(f"error: {flag_error_line(e, argv)}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    """The command line: ``python -m trdetr_jax.main [--config=...] [--workdir=...]``
    (``sys.argv``, which ml_collections reads while defining ``--config``)."""
    define_flags(sys.argv)
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
