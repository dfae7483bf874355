"""Schemathesis hooks for Client API's conformance run (tests/api/conformance.rs).

One check replaces schemathesis's `positive_data_acceptance`: a request that follows the
OpenAPI document must be accepted, except for the refusals no JSON Schema can express, which
the document's description names. Each exemption below is narrow: it looks at the problem's
machine `code` and at every field error, so a refusal of anything else still fails the run.

- 400 `invalid_cursor`: a cursor is valid only if this service issued it for the same
  endpoint, resource, filters and sort. A made-up one is refused like this.
- 422 on a body's reference field ("must be the id of one of your …"): the record it points at
  is missing or belongs to another company. Which ids exist is data, not schema.
- 422 on a job's `custom_fields.<name>`: a name without a definition, or a value its definition
  does not allow (GET /custom_fields). The definitions are the provider's data, not schema.
- 422 for a window that ends before it starts (`end_time`, `end_at`: "must be after"), or a job
  window given half (`start_time` without `end_time`): OpenAPI cannot compare two fields.
- 409 `provider_conflict`: the provider refused a booking as a conflict (a double-booked
  technician), which depends on the bookings it holds.
- 422 for a contact created with none of first name, last name and email: the body's
  description says so; encoding it as an anyOf would split generated clients' body model.
- 422 on `Idempotency-Key` "already used for a different request": the key was sent before
  with another body (the generator reuses simple values); replaying it is the key's purpose.
- 414: a URL over 65,534 bytes (a long `ids` list of multi-byte characters, percent-encoded)
  is refused by the HTTP layer; the document declares it.
- 422 on a webhook URL that names a private address, carries credentials or a fragment, or
  that the URL standard cannot parse; 409 `too_many_subscriptions` once an endpoint holds 20.
- 422 on `/query` and `/export` for a filter or sort that does not apply to the resource asked
  for (`status` on clients, `sort=number` on contacts), and for `updated_since` given together
  with its alias `updated_at_from`: OpenAPI parameters cannot depend on one another.
"""

import itertools
import re

import schemathesis
from schemathesis.core.failures import Failure
from schemathesis.specs.openapi import checks as builtin

# The coverage phase puts every combination of an operation's optional query parameters in a
# request of its own: 2^n requests, 32,768 for /query with its 15 filters, most of a 12-minute
# run. Pairwise (every pair of optional parameters, and all of them but one; each one alone is
# tried apart from this) keeps each parameter tried beside each other one, in about eight minutes over the 54 operations (measured).
_all_combinations = itertools.combinations


def _pairwise(iterable, size):
    items = list(iterable)
    if size == 2 or size == len(items) - 1:
        yield from _all_combinations(items, size)


from schemathesis.generation.hypothesis import builder as _builder  # noqa: E402

_builder.combinations = _pairwise

ALLOWED = {200, 201, 202, 204, 401, 403, 404, 414}

SEMANTIC_MESSAGES = (
    "must be the id of one of your ",
    " records cannot be filtered by ",
    "an alias of updated_since",
    "already used for a different request",
    "must be after ",
    "a window needs both start_time and end_time",
    "a contact needs a first name, a last name or an email",
    # A webhook URL is checked beyond its syntax: no private address, credentials or fragment,
    # and one the URL standard can parse (a "uri" string may still be none of these).
    "points at a private, loopback or link-local address",
    "must not carry a user name or password",
    "must not have a fragment",
    "must have a host",
    "is not a URL",
)


def _problem(response):
    try:
        body = response.json()
    except Exception:
        return {}
    return body if isinstance(body, dict) else {}


def _semantic(case, response) -> bool:
    problem = _problem(response)
    if response.status_code == 409 and problem.get("code") in ("provider_conflict", "too_many_subscriptions"):
        return True
    if response.status_code == 400 and problem.get("code") == "invalid_cursor":
        query = case.query or {}
        return "cursor" in query or "since" in query
    if response.status_code == 422 and problem.get("code") == "invalid_input":
        errors = problem.get("errors") or []
        generic = case.path.endswith("/query/") or case.path.endswith("/export")

        def explained(error):
            message = error.get("message", "")
            if any(m in message for m in SEMANTIC_MESSAGES):
                return True
            if error.get("field", "").startswith("custom_fields."):
                return True
            # `sort=number` asked of a resource without numbers, through /query or /export.
            return generic and error.get("field") == "sort" and (case.query or {}).get("sort") in ("number", "-number")

        return bool(errors) and all(explained(e) for e in errors)
    return False


@schemathesis.check
def positive_data_acceptance_in_scope(ctx, response, case):
    """Schema-valid requests are accepted, but for the refusals named above."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status in ALLOWED or 200 <= status < 300 or status >= 500:
        # 5xx is not_a_server_error's to report.
        return None
    if _semantic(case, response):
        return None
    raise Failure(
        operation=case.operation.label,
        title="API rejected schema-compliant request",
        message=f"Valid data should have been accepted; got {status}: {response.text[:500]}",
    )


# RFC 9110 §5.5: a field value is visible characters, spaces and tabs (and obs-text). A header
# value with any other control character is not HTTP; the HTTP layer (hyper) refuses such a
# request with a bare 400 before the service reads it, so the service's own answers are not
# checked against it. The generator is kept from making such values (schemathesis.toml's
# exclude-header-characters) except where a declared header's negative case breaks its pattern.
_NOT_HTTP = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _is_http(response) -> bool:
    headers = response.request.headers or {}
    return not any(_NOT_HTTP.search(v if isinstance(v, str) else v.decode("latin-1")) for v in headers.values())


@schemathesis.check
def content_type_conformance_of_http(ctx, response, case):
    """schemathesis's content_type_conformance, for requests that are HTTP."""
    return builtin.content_type_conformance(ctx, response, case) if _is_http(response) else None


@schemathesis.check
def response_schema_conformance_of_http(ctx, response, case):
    """schemathesis's response_schema_conformance, for requests that are HTTP."""
    return builtin.response_schema_conformance(ctx, response, case) if _is_http(response) else None
