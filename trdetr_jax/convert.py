"""``python -m trdetr_jax.convert``: kept as a short name for :mod:`trdetr_jax.official.convert`."""

import sys

from trdetr_jax.official.convert import main

if __name__ == "__main__":
    sys.exit(main())
