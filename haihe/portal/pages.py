"""Portal pages mounted on the platform app (the portal issue grows this into the full web UI)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

_INDEX = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Haihe</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>Haihe</h1><p>AI supercomputing as a service.</p>
<ul><li><a href="/docs">API reference</a></li><li><a href="/readyz">Readiness</a></li></ul></main></body></html>"""


def mount(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def index() -> str:
        return _INDEX
