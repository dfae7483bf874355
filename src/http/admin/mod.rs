//! The admin API (DESIGN.md §7): every route takes an `AdminAuth` and is scoped to its account.

pub mod auth;
pub mod connections;
pub mod endpoints;
pub mod events;
pub mod webhooks;

use axum::Router;

use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(auth::router())
        .merge(connections::router())
        .merge(endpoints::router())
        .merge(events::router())
        .merge(webhooks::router())
}
