// Starts GraphiQL (React and GraphiQL are loaded before this, from this server) against the
// endpoint the page names. The key goes in the headers editor: it never enters the URL, and
// headers are not saved in the browser.
"use strict";
(function () {
  var root = document.getElementById("graphiql");
  var url = root.getAttribute("data-endpoint");
  var fetcher = GraphiQL.createFetcher({ url: url });
  var headers = JSON.stringify({ Authorization: "Bearer sk_test_or_live_key_here" }, null, 2);
  var query =
    "# Put your key in the Headers tab below, then run this query (Ctrl-Enter).\n" +
    "# The docs (the book icon, left) and completion know the whole schema already.\n" +
    "{\n  me { id companyExternalId access scopes }\n  jobs(first: 5) { nodes { id number status client { name } } }\n}\n";

  function start(schema) {
    ReactDOM.createRoot(root).render(
      React.createElement(GraphiQL, {
        schema: schema,
        fetcher: fetcher,
        defaultHeaders: headers,
        shouldPersistHeaders: false,
        defaultEditorToolsVisibility: "headers",
        defaultQuery: query,
      })
    );
  }

  // The schema is public (like the SDL): the docs explorer and completion work before a key is
  // typed. Without it, GraphiQL would ask the endpoint, which answers nothing without a key;
  // `undefined` lets GraphiQL fetch it through the endpoint as usual.
  fetch("/api/public/graphql/introspection.json")
    .then(function (r) { return r.ok ? r.json() : null; })
    .catch(function () { return null; })
    .then(function (answer) { start(answer && answer.data ? answer.data : undefined); });
})();
