"""GraphQL tools in Python meet the public API through introspection, as graphql-js does in
tests/browser/introspection.mjs: graphql-core's standard introspection query, with every option
and with none, runs without an error; `build_client_schema` makes a schema that prints exactly
the committed SDL; and the GraphQL queries the README shows validate against it.

Run by tests/api/graphql.rs with URL, KEY, SDL (a path) and QUERIES (a JSON array).
"""

import json
import os
import sys
import urllib.request

from graphql import (
    build_client_schema,
    build_schema,
    get_introspection_query,
    lexicographic_sort_schema,
    parse,
    print_schema,
    validate,
)


def post(query: str) -> dict:
    request = urllib.request.Request(
        os.environ["URL"],
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {os.environ['KEY']}"},
    )
    with urllib.request.urlopen(request) as response:
        body = json.load(response)
        if response.status != 200 or body.get("errors"):
            sys.exit(f"introspection failed ({response.status}): {body.get('errors', body)}")
        return body["data"]


everything = get_introspection_query(
    descriptions=True,
    specified_by_url=True,
    directive_is_repeatable=True,
    schema_description=True,
    input_value_deprecation=True,
)
schema = build_client_schema(post(everything))
post(get_introspection_query())

served = print_schema(lexicographic_sort_schema(schema))
with open(os.environ["SDL"], encoding="utf-8") as f:
    committed = print_schema(lexicographic_sort_schema(build_schema(f.read())))
if served != committed:
    a, b = served.split("\n"), committed.split("\n")
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    sys.exit(f"the SDL built from introspection differs at line {at + 1}:\n  served:    {a[at:at + 4]}\n  committed: {b[at:at + 4]}")

checked = 0
for query in json.loads(os.environ["QUERIES"]):
    errors = validate(schema, parse(query))
    if errors:
        sys.exit(f"a README query is not valid: {query}\n" + "\n".join(e.message for e in errors))
    checked += 1
print(f"graphql-core introspection ok: {len(schema.type_map)} types, SDL equal, {checked} README queries valid")
