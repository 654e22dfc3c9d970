"""What a GraphQL request to MLflow asks for, so the proxy's policy can decide it like a REST call.

MLflow's web UI loads a run page through ``POST /graphql`` (``mlflowGetRun``, ``mlflowGetMetricHistoryBulkInterval``,
``mlflowListArtifacts``, ``mlflowSearchRuns`` …). Each root field takes one ``input`` object naming the run or
experiments it reads, so a request is reduced to ``[(field, input)]`` with variables substituted; the policy then
checks each run or experiment id as it checks REST calls. Anything it cannot reduce that way — several operations,
fragments or introspection at the root, a batch — is refused, not guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class GraphqlRefused(ValueError):
    """The request is not one the policy can decide."""


def root_fields(body: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``[(root field name, its input object)]`` of the one operation in ``body`` (``query``, ``variables``,
    ``operationName``), or GraphqlRefused."""
    from graphql import GraphQLError, OperationDefinitionNode, parse
    from graphql.language import FieldNode
    from graphql.utilities import value_from_ast_untyped

    query = body.get("query")
    if not isinstance(query, str) or len(query) > 100_000:
        raise GraphqlRefused("a GraphQL request needs one query (text)")
    variables = body.get("variables") or {}
    if not isinstance(variables, dict):
        raise GraphqlRefused("GraphQL variables must be an object")
    try:
        document = parse(query, max_tokens=20_000)
    except GraphQLError as exc:
        raise GraphqlRefused(f"unreadable GraphQL: {exc.message}") from None
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    wanted = body.get("operationName")
    if wanted:
        operations = [o for o in operations if o.name is not None and o.name.value == wanted]
    if len(operations) != 1:
        raise GraphqlRefused("send exactly one GraphQL operation")
    fields: list[tuple[str, dict[str, Any]]] = []
    for selection in operations[0].selection_set.selections:
        if not isinstance(selection, FieldNode):
            raise GraphqlRefused("fragments at the root of a GraphQL operation are not supported here")
        name = selection.name.value
        if name.startswith("__"):
            raise GraphqlRefused("GraphQL introspection is not available here")
        given: dict[str, Any] = {}
        for arg in selection.arguments:
            if arg.name.value == "input":
                value = value_from_ast_untyped(arg.value, variables)
                if not isinstance(value, dict):
                    raise GraphqlRefused(f"{name}: input must be an object")
                given = value
        fields.append((name, given))
    return fields
