"""``python -m haihe.cli``: the same as the ``haihe`` command."""

from haihe.cli.main import main

main()
