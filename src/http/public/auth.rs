//! `EndpointAuth`: the one extractor every public route uses. 401 for a missing, malformed,
//! wrong, revoked or expired key (one body for all); 403 for a deactivated endpoint or an IP
//! outside the allowlist; 429 when the endpoint's quota is spent; then the handler asks for
//! the scope it needs (`require_read`, `require_write`), which is a 403 naming the scope.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path};
use axum::http::header;
use axum::http::request::Parts;
use clientapi_schema::model::Resource;

use super::ContextSlot;
use crate::auth::{AuthFailure, Principal};
use crate::error::ApiError;
use crate::startup::AppState;

/// An authenticated, authorised-to-enter public request.
pub struct EndpointAuth {
    pub principal: Arc<Principal>,
    slot: Option<ContextSlot>,
}

fn bearer_or_api_key(parts: &Parts) -> Option<&str> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

impl FromRequestParts<AppState> for EndpointAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let principal = match verify(parts, state, ip).await {
            Ok(p) => p,
            Err(e) => {
                if matches!(e, ApiError::Unauthorized | ApiError::TooManyAuthAttempts) {
                    state.verifier.hold_failure(ip).await;
                }
                return Err(e);
            }
        };
        let slot = parts.extensions.get::<ContextSlot>().cloned();
        if let Some(slot) = &slot {
            let mut ctx = slot.lock().unwrap_or_else(|e| e.into_inner());
            ctx.endpoint_id = Some(principal.endpoint_id);
            ctx.key_id = Some(principal.key_id);
        }
        tracing::Span::current().record("endpoint_id", principal.public_id.as_str());
        if principal.status != "active" {
            return Err(ApiError::Forbidden {
                code: "endpoint_inactive",
                detail: "This endpoint is deactivated.".into(),
            });
        }
        if !principal.ip_allowed(ip) {
            return Err(ApiError::Forbidden {
                code: "ip_not_allowed",
                detail: "Requests from this address are not allowed for this endpoint.".into(),
            });
        }
        state.verifier.touch(principal.endpoint_id, ip);
        let rate = state.rate_limits.check(principal.endpoint_id, principal.rate_limit_per_minute);
        if let Some(slot) = &slot {
            slot.lock().unwrap_or_else(|e| e.into_inner()).rate = Some(rate);
        }
        if !rate.allowed {
            return Err(ApiError::RateLimited { retry_after_secs: rate.reset_secs });
        }
        Ok(Self { principal, slot })
    }
}

/// The key's principal for the path's endpoint: 401 for anything but a good key for it.
async fn verify(parts: &mut Parts, state: &AppState, ip: IpAddr) -> Result<Arc<Principal>, ApiError> {
    let params =
        Path::<HashMap<String, String>>::from_request_parts(parts, state).await.map_err(|_| ApiError::NotFound)?;
    let public_id = params.get("endpoint").ok_or(ApiError::NotFound)?;
    // Not an id we could have issued: answer like any other unknown endpoint or bad key.
    if public_id.len() > 64 || !public_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ApiError::Unauthorized);
    }
    let token = bearer_or_api_key(parts).ok_or(ApiError::Unauthorized)?;
    match state.verifier.authenticate(&state.db, public_id, token, ip).await {
        Ok(p) => Ok(p),
        Err(AuthFailure::Unauthorized) => Err(ApiError::Unauthorized),
        Err(AuthFailure::Throttled) => Err(ApiError::TooManyAuthAttempts),
    }
}

impl EndpointAuth {
    fn has(&self, scope: &str) -> bool {
        self.principal.scopes.iter().any(|s| s == scope)
    }

    /// Whether the endpoint's scopes let it read `resource` (nothing recorded).
    pub fn may_read(&self, resource: Resource) -> bool {
        self.has(&resource.read_scope())
    }

    /// The endpoint may read `resource`; records it for the request log.
    pub fn require_read(&self, resource: Resource) -> Result<(), ApiError> {
        self.set_resource(resource);
        let scope = resource.read_scope();
        if self.has(&scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden { code: "missing_scope", detail: format!("This key lacks the {scope} scope.") })
        }
    }

    /// The endpoint may manage its webhook subscriptions; recorded as resource `webhook`.
    pub fn require_webhooks(&self) -> Result<crate::webhooks::Owner, ApiError> {
        if let Some(slot) = &self.slot {
            slot.lock().unwrap_or_else(|e| e.into_inner()).resource = Some("webhook".to_owned());
        }
        let scope = crate::webhooks::WEBHOOKS_MANAGE;
        if !self.has(scope) {
            return Err(ApiError::Forbidden {
                code: "missing_scope",
                detail: format!("This key lacks the {scope} scope."),
            });
        }
        let p = &self.principal;
        Ok(crate::webhooks::Owner {
            endpoint_id: p.endpoint_id,
            endpoint_public_id: p.public_id.clone(),
            account_id: p.account_id,
            connection_id: p.connection_id,
            company_id: p.company_id,
            scopes: p.scopes.clone(),
        })
    }

    /// The endpoint is read-write and may write `resource`.
    pub fn require_write(&self, resource: Resource) -> Result<(), ApiError> {
        self.set_resource(resource);
        write_permission(&self.principal, resource)
    }

    fn set_resource(&self, resource: Resource) {
        if let Some(slot) = &self.slot {
            slot.lock().unwrap_or_else(|e| e.into_inner()).resource = Some(resource.singular().to_owned());
        }
    }

    /// How many records the answer holds, for the request log.
    pub fn set_item_count(&self, count: usize) {
        if let Some(slot) = &self.slot {
            slot.lock().unwrap_or_else(|e| e.into_inner()).item_count = Some(count.min(i32::MAX as usize) as i32);
        }
    }

    /// The GraphQL operation name, for the request log.
    pub fn set_operation(&self, name: Option<String>) {
        if let Some(slot) = &self.slot {
            slot.lock().unwrap_or_else(|e| e.into_inner()).operation = name;
        }
    }
}

/// Whether `p` may write `resource`: a read-write endpoint holding the resource's write scope.
pub fn write_permission(p: &Principal, resource: Resource) -> Result<(), ApiError> {
    if p.access != "read_write" {
        return Err(ApiError::Forbidden { code: "read_only_endpoint", detail: "This endpoint is read-only.".into() });
    }
    let scope = resource.write_scope();
    if p.scopes.contains(&scope) {
        Ok(())
    } else {
        Err(ApiError::Forbidden { code: "missing_scope", detail: format!("This key lacks the {scope} scope.") })
    }
}
