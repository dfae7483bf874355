//! clientapi-graphql: the GraphQL schema over the company-scoped mirror (async-graphql 7.2).
//!
//! Not built yet (issue 7): the crate exists so the workspace has its final shape and its
//! dependencies are compiled and cached. It will share `clientapi_schema::read` with REST.
