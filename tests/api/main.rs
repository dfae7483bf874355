//! Tests of the whole service over HTTP against a real Postgres.

mod browser;
mod cli;
mod conformance;
mod contract;
mod dashboard;
mod demo;
mod docs;
mod endpoints;
mod graphql;
mod health;
mod helpers;
mod jobber;
mod local_postgres;
mod migrations;
mod replicas;
mod resilience;
mod rest;
mod servicem8;
mod sites;
mod sync;
mod webhooks;
mod writes;
