//! Provider simulators: stand-ins for provider servers on loopback, for tests and the demo.

pub mod jobber;
pub mod servicem8;
pub mod webhooks;
