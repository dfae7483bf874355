//! clientapi-sync: provider adapters (ServiceM8, Jobber), OAuth tokens, the sync engine and its
//! scheduler, and provider simulators. Knows the mirror through `clientapi-schema`; knows
//! nothing of the public API or GraphQL (the simulators serve HTTP only as provider stand-ins).

pub mod connections;
pub mod crypto;
pub mod engine;
pub mod jobber;
pub mod oauth;
pub mod provider;
pub mod scheduler;
pub mod servicem8;
pub mod simulator;
pub mod status;

use std::sync::Arc;

use provider::{Provider, ProviderKind};

/// The configured provider adapters, by kind.
#[derive(Clone)]
pub struct Providers {
    pub servicem8: Arc<servicem8::ServiceM8>,
    pub jobber: Arc<jobber::Jobber>,
}

impl Providers {
    pub fn get(&self, kind: ProviderKind) -> Arc<dyn Provider> {
        match kind {
            ProviderKind::ServiceM8 => self.servicem8.clone(),
            ProviderKind::Jobber => self.jobber.clone(),
        }
    }
}
