//! clientapi: the service. CLI, configuration, startup, the HTTP surface (public REST, admin
//! API), authentication and the request log. Provider access lives in `clientapi-sync`, the
//! mirror in `clientapi-schema`, GraphQL in `clientapi-graphql`.

pub mod accounts;
pub mod auth;
pub mod cli;
pub mod companies;
pub mod config;
pub mod demo;
pub mod endpoint_key;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod http;
pub mod idempotency;
pub mod provider_hooks;
pub mod queue_worker;
pub mod rate_limit;
pub mod replicas;
pub mod request_log;
pub mod schedule;
pub mod startup;
pub mod telemetry;
pub mod usage;
pub mod webhooks;
pub mod writes;
