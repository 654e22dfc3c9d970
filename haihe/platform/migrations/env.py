"""Alembic environment: runs on the connection handed over by ``haihe.platform.db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import haihe.platform.datasets.rows
import haihe.platform.endpoints.rows  # noqa: F401 - the endpoint tables
from haihe.platform import models  # noqa: F401 - registers every table on Base.metadata
from haihe.platform.db import Base

target_metadata = Base.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # `alembic` CLI use: take the URL from the config
        url = context.config.get_main_option("sqlalchemy.url") or ""
        with create_engine(url).connect() as conn:
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run()
