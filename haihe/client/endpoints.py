"""Endpoint operations of the typed API client (mixed into ``HaiheClient``): deploy, update, scale, remove, usage."""

from __future__ import annotations

from typing import Any

from haihe.client.http import model as as_model
from haihe.client.http import models, seg
from haihe.platform.endpoints.schemas import EndpointPublic


def _ep(org: str, name: str) -> str:
    return f"/api/v1/orgs/{seg(org)}/endpoints/{seg(name)}"


class EndpointsClientMixin:
    """Endpoint methods; ``self.request(method, path, **kwargs)`` is provided by HaiheClient."""

    def request(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover - HaiheClient's
        raise NotImplementedError

    def create_endpoint(self, org: str, name: str, model: str, **options: Any) -> EndpointPublic:
        """Deploy ``model`` (``org/name@alias`` or ``org/name:N``); options: scheduler, min_replicas, max_replicas,
        max_batch_size, batch_wait_ms, cpus_per_replica, rate_limit_per_s, rate_limit_burst, partition, gpus."""
        body = {"name": name, "model": model, **{k: v for k, v in options.items() if v is not None}}
        return as_model(EndpointPublic, self.request("POST", f"/api/v1/orgs/{seg(org)}/endpoints", json=body))

    def list_endpoints(self, org: str | None = None) -> list[EndpointPublic]:
        params = {"org": org} if org else None
        return models(EndpointPublic, self.request("GET", "/api/v1/endpoints", params=params)["items"])

    def get_endpoint(self, org: str, name: str) -> EndpointPublic:
        return as_model(EndpointPublic, self.request("GET", _ep(org, name)))

    def update_endpoint(self, org: str, name: str, **changes: Any) -> EndpointPublic:
        body = {k: v for k, v in changes.items() if v is not None}
        return as_model(EndpointPublic, self.request("PATCH", _ep(org, name), json=body))

    def scale_endpoint(self, org: str, name: str, min_replicas: int, max_replicas: int) -> EndpointPublic:
        body = {"min_replicas": min_replicas, "max_replicas": max_replicas}
        return as_model(EndpointPublic, self.request("POST", f"{_ep(org, name)}/scale", json=body))

    def delete_endpoint(self, org: str, name: str) -> None:
        self.request("DELETE", _ep(org, name))

    def endpoint_usage(self, org: str, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"{_ep(org, name)}/usage"))
