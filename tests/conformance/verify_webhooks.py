"""Verifies webhook deliveries with the Standard Webhooks reference library (PyPI
`standardwebhooks`), not the service's own code. Reads a JSON list of
{"secret": "whsec_…", "headers": {…}, "body": "…"} on stdin; prints one line per message,
`ok <webhook-id>` or `bad <webhook-id> <why>`, and exits 1 if any failed."""

import json
import sys

try:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
except ImportError:
    sys.exit("verify_webhooks.py needs the standardwebhooks package: "
             "tests/conformance/.venv/bin/pip install --no-deps -r tests/conformance/requirements.txt")

failed = False
for message in json.load(sys.stdin):
    msg_id = message["headers"].get("webhook-id", "?")
    try:
        Webhook(message["secret"]).verify(message["body"], message["headers"])
        print("ok", msg_id)
    except WebhookVerificationError as e:
        failed = True
        print("bad", msg_id, e)
sys.exit(1 if failed else 0)
