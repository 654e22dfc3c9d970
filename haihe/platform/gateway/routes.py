"""Gateway routes: the Open Inference Protocol v2 (``oip_routes``, included here) and OpenAI's ``POST /v1/embeddings``.

Both pass the same gates before a model is called (``gates``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from haihe.platform.gateway import oip, oip_routes
from haihe.platform.gateway.gates import admit, call_model, check_response_size

router = APIRouter(tags=["inference"])
router.include_router(oip_routes.router)


@router.post("/v1/embeddings", operation_id="create_embeddings")
async def create_embeddings(body: oip.EmbeddingsRequest, request: Request) -> Response:
    """OpenAI-compatible embeddings: ``model`` is the endpoint's name (works with the official ``openai`` client)."""
    hub, principal, route = await admit(request, body.model)
    try:
        texts = oip.embedding_rows(body, hub.config.max_rows)
    except BaseException:
        hub.book.finish(route.org_id, False)
        raise
    outputs = await call_model(request, hub, principal, route, list(texts))
    data = oip.encode(oip.embeddings_response(route.name, texts, outputs, body.encoding_format, body.dimensions),
                      [])[0]
    check_response_size(hub, len(data))
    return Response(data, media_type="application/json")
