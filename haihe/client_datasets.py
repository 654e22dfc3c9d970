"""Dataset operations of the typed API client (mixed into ``HaiheClient``)."""

from __future__ import annotations


class DatasetsClientMixin:
    """Dataset methods; ``self.request(method, path, **kwargs)`` is provided by HaiheClient."""
