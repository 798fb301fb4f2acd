//! The sans-IO components of an agent stack.
//!
//! Each component is a state machine that reaches the world only through
//! [`env::Env`] and [`wire::Msg`]: it owns no clock, socket or thread. The
//! simulator runtime (`crate::sim`) drives them today; a live runtime drives
//! the same code. Nothing here may name `crate::sim`, `crate::drill` or any
//! runtime type.

pub mod env;
pub mod ids;
pub mod lazy_timer;
pub mod ledger;
pub mod orchestrator;
pub mod policy;
pub mod provider;
pub mod queue;
pub mod region;
pub mod resend;
pub mod router;
pub mod store;
pub mod vector;
pub mod wire;
pub mod worker;
pub mod workflow;
