//! clientapi-schema: the unified record model, the mirror's reads and writes, and the local
//! Postgres the service runs on by default. Knows nothing of HTTP or GraphQL.

pub mod cursor;
pub mod db;
pub mod ids;
pub mod local_pg;
pub mod mirror;
pub mod model;
pub mod outbox;
pub mod read;
pub mod reader_pool;
pub mod secret;
pub mod write;

pub use ids::*;
