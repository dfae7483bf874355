// The GraphQL-over-HTTP audit of graphql-http (the reference implementation of the spec):
// every MUST passes; the SHOULDs and MAYs that do not are printed with the audit's reason, for
// the docs. Run by tests/api/graphql.rs with URL and KEY set.

import { auditServer } from "graphql-http";

const { URL, KEY } = process.env;
// One request first: the key's first verification is argon2 (bounded per endpoint), and the
// audit fires its checks all at once.
await fetch(URL, { method: "POST", headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" }, body: '{"query":"{ __typename }"}' });
const results = await auditServer({
  url: URL,
  fetchFn: (input, init = {}) => {
    const headers = new Headers(init.headers || {});
    headers.set("Authorization", `Bearer ${KEY}`);
    return fetch(input, { ...init, headers });
  },
});
let failedMust = 0;
const counts = { ok: 0, warn: 0, error: 0 };
for (const r of results) {
  counts[r.status] += 1;
  if (r.status === "error") {
    failedMust += 1;
    console.log(`MUST failed: ${r.name}: ${r.reason}`);
  } else if (r.status === "warn") {
    console.log(`SHOULD/MAY not met: ${r.name}: ${r.reason}`);
  }
}
console.log(`audit: ${results.length} checks, ${counts.ok} ok, ${counts.warn} warnings, ${counts.error} MUST failures`);
process.exit(failedMust ? 1 : 0);
