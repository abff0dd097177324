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
config_flags.DEFINE_config_file(
    "config",
    str(DEFAULT_CONFIG),
    "Training configuration file (a configs/*.py); override fields with --config.a.b=value.",
    lock_config=True,
)
flags.DEFINE_string(
    "workdir", None, "Run directory (checkpoints, logs, predictions). Default: workdir/<config>."
)


class _OwnInfoOnly(stdlib_logging.Filter):
    def filter(self, record: stdlib_logging.LogRecord) -> bool:
        return record.levelno >= stdlib_logging.WARNING or _PACKAGE_DIR in record.pathname


_PACKAGE_DIR = str(pathlib.Path(__file__).resolve().parent)


def default_workdir(config_path: str) -> str:
    name = pathlib.Path(config_path.split(":", 1)[0]).stem
    return str(pathlib.Path("workdir") / name)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    # Libraries (Orbax: several lines per checkpoint) log at INFO too; keep their warnings
    # and errors, and this package's INFO lines.
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    from trdetr_jax import train
    from trdetr_jax.data import DataError

    workdir = FLAGS.workdir or default_workdir(FLAGS["config"].config_filename)
    try:
        train.train_and_evaluate(FLAGS.config, workdir)
    except (train.NonFiniteLossError, DataError) as e:
        # Errors the user acts on (bad data, diverged run): one clear line, no traceback.
        logging.error("%s", e)
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
