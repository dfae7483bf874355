// Starts GraphiQL (React and GraphiQL are loaded before this, from this server) against the
// endpoint the page names. The key goes in the headers editor: it never enters the URL, and
// headers are not saved in the browser.
"use strict";
(function () {
  var root = document.getElementById("graphiql");
  var url = root.getAttribute("data-endpoint");
  var fetcher = GraphiQL.createFetcher({ url: url });
  var headers = JSON.stringify({ Authorization: "Bearer sk_test_or_live_key_here" }, null, 2);
  ReactDOM.createRoot(root).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultHeaders: headers,
      shouldPersistHeaders: false,
      defaultEditorToolsVisibility: "headers",
      defaultQuery: "# Put your key in the Headers tab below, then run this query (Ctrl-Enter);\n# re-fetch the schema (the circular arrow, left) for the docs and completion.\n{\n  me { id companyExternalId access scopes }\n  jobs(first: 5) { nodes { id number status client { name } } }\n}\n",
    })
  );
})();
