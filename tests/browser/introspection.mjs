// GraphQL tools meet the public API through introspection. With graphql-js (the library
// GraphiQL, Apollo and Relay codegen build on): the standard introspection query, with every
// option and with none, runs without an error; the client schema built from it prints exactly
// the committed SDL (graphql/schema.graphql); and the GraphQL queries the README shows are valid
// against it.
//
// Run by tests/api/graphql.rs with URL (the endpoint's GraphQL URL), KEY, SDL (a path) and
// QUERIES (a JSON array of query texts).

import { readFileSync } from "node:fs";
import {
  buildClientSchema, buildSchema, getIntrospectionQuery, lexicographicSortSchema, parse, printSchema, validate,
} from "graphql";

const { URL, KEY, SDL, QUERIES } = process.env;

async function post(query) {
  const response = await fetch(URL, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ query }),
  });
  const body = await response.json();
  if (response.status !== 200 || body.errors) {
    throw new Error(`introspection failed (${response.status}): ${JSON.stringify(body.errors ?? body)}`);
  }
  return body.data;
}

const everything = getIntrospectionQuery({
  descriptions: true, specifiedByUrl: true, directiveIsRepeatable: true, schemaDescription: true,
  inputValueDeprecation: true,
});
const full = await post(everything);
await post(getIntrospectionQuery());
const schema = buildClientSchema(full);

const served = printSchema(lexicographicSortSchema(schema));
const committed = printSchema(lexicographicSortSchema(buildSchema(readFileSync(SDL, "utf8"))));
if (served !== committed) {
  const a = served.split("\n"), b = committed.split("\n");
  const at = a.findIndex((line, i) => line !== b[i]);
  throw new Error(`the SDL built from introspection differs from ${SDL} at line ${at + 1}:\n  served:    ${a.slice(at, at + 4).join("\n")}\n  committed: ${b.slice(at, at + 4).join("\n")}`);
}

let checked = 0;
for (const query of JSON.parse(QUERIES)) {
  const errors = validate(schema, parse(query));
  if (errors.length) throw new Error(`a README query is not valid: ${query}\n${errors.map((e) => e.message).join("\n")}`);
  checked += 1;
}
console.log(`introspection ok: ${schema.getTypeMap() ? Object.keys(schema.getTypeMap()).length : 0} types, SDL equal, ${checked} README queries valid`);
