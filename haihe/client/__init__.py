"""Haihe's Python SDK and the CLI's client of the REST API.

    from haihe.client import HaiheClient
    hh = HaiheClient("http://127.0.0.1:8000", token="hhk_…")
    hh.create_project("acme", "vision")

``sdk`` holds ``HaiheClient`` (one method per API operation, mixing in ``datasets``, ``zoo`` and ``endpoints``);
``http`` the transport: URL and credentials, and errors raised as the :mod:`haihe.errors` class the server raised.
"""

from haihe.client.http import DEFAULT_URL, credentials_path, load_credentials, raise_for_error, save_credentials
from haihe.client.sdk import HaiheClient

__all__ = ["DEFAULT_URL", "HaiheClient", "credentials_path", "load_credentials", "raise_for_error",
           "save_credentials"]
