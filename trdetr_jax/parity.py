"""``python -m trdetr_jax.parity``: kept as a short name for :mod:`trdetr_jax.official.parity`."""

import sys

from trdetr_jax.official.parity import main

if __name__ == "__main__":
    sys.exit(main())
