"""``haihe datasets …``: push (parallel, resumable, with progress), ls, show, pull, share, rm."""

from __future__ import annotations

import typer

datasets_app = typer.Typer(help="Versioned datasets on S3: push, list, show, pull, share, remove.", no_args_is_help=True)
