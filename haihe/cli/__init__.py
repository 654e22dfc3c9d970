"""The ``haihe`` command line: one module a command group (``jobs``, ``datasets``, ``zoo`` for ``models``,
``endpoints``, ``quota``) under ``main``, which also holds the top level, admin and local bring-up; what they share
is in ``common``. Everything but local bring-up goes through the REST API (``haihe.client``). Heavy modules are imported
inside the commands, so ``haihe --help`` answers at once.
"""

from haihe.cli.main import app, main

__all__ = ["app", "main"]
