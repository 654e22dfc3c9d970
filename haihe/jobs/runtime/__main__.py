"""``python -m haihe.jobs.runtime``: see :mod:`haihe.jobs.runtime.main`."""

import sys

from haihe.jobs.runtime.main import main

sys.exit(main())
