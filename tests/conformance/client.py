"""A Python client generated from the served OpenAPI document (openapi-python-client) does what
a customer's developer would: lists with filters, follows next_cursor to the end, reads one
record, creates and updates a job, and reads the changes feed.

Run by tests/api/conformance.rs with GENERATED (the directory holding the generated package
`clientapi_client`), BASE_URL, ENDPOINT and KEY.
"""

import os
import sys

sys.path.insert(0, os.environ["GENERATED"])

from clientapi_client import AuthenticatedClient  # noqa: E402
from clientapi_client.api.changes import changes  # noqa: E402
from clientapi_client.api.endpoint import me  # noqa: E402
from clientapi_client.api.jobs import create_job, get_job, list_jobs, update_job  # noqa: E402
from clientapi_client.models import CreateJobBody, CreateJobBodyStatus, UpdateJobBody  # noqa: E402
from clientapi_client.models.list_jobs_sort import ListJobsSort  # noqa: E402
from clientapi_client.models.problem import Problem  # noqa: E402

endpoint = os.environ["ENDPOINT"]
client = AuthenticatedClient(base_url=os.environ["BASE_URL"], token=os.environ["KEY"], raise_on_unexpected_status=True)


def ok(answer, what):
    if answer is None or isinstance(answer, Problem):
        sys.exit(f"{what} failed: {answer}")
    return answer


who = ok(me.sync(endpoint, client=client), "/me")

# Every job, two at a time, newest change first; then the same with a status filter.
seen, cursor = [], None
while True:
    page = ok(list_jobs.sync(endpoint, client=client, page_size=2, sort=ListJobsSort.VALUE_1, cursor=cursor), "a page")
    seen.extend(job.id for job in page.data)
    cursor = page.next_cursor
    if not cursor:
        break
assert len(seen) == len(set(seen)) and seen, f"pages repeat or are empty: {seen}"
statuses = ["Quote", "Work Order"]
filtered = ok(list_jobs.sync(endpoint, client=client, status=statuses, page_size=1000), "a filtered list")
assert all(job.status in statuses for job in filtered.data), "the status filter holds"

one = ok(get_job.sync(endpoint, seen[0], client=client), "one job")
assert one.data.id == seen[0]

created = ok(
    create_job.sync(
        endpoint,
        client=client,
        body=CreateJobBody(status=CreateJobBodyStatus.QUOTE, description="Booked by a generated client"),
        idempotency_key="generated-client-1",
    ),
    "a create",
)
job_id = created.data.id
updated = ok(update_job.sync(endpoint, job_id, client=client, body=UpdateJobBody(description="Changed by it")), "an update")
assert updated.data.description == "Changed by it"

feed = ok(changes.sync(endpoint, client=client, page_size=1000), "the changes feed")
while feed.has_more:
    feed = ok(changes.sync(endpoint, client=client, since=feed.next_cursor, page_size=1000), "the changes feed")
assert feed.data, "the feed ends with the latest changes"
assert feed.data[-1].id == job_id, f"the last change is the job just written: {feed.data[-1]}"
print(f"generated client ok: {len(seen)} jobs paged, {len(filtered.data)} filtered, job {job_id} created and updated")
