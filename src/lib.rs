//! agentdrill: chaos and disaster-recovery drills for AI-agent stacks.
//!
//! A simulated agent stack (orchestrator, workers, fake payment and email
//! APIs, a vector store, LLM provider mocks, two regions) runs under
//! injected faults on a deterministic simulator; RTO, RPO and duplicate side
//! effects are measured from ground truth and compared with the recovery
//! tier the stack claims. See `ARCHITECTURE.md` for the map.

#![warn(missing_docs)]

pub mod bench;
pub mod drill;
pub mod env;
pub mod fuzz;
pub mod ids;
pub mod invariants;
pub mod ledger;
pub mod loader;
pub mod matrix;
pub mod measure;
pub mod orchestrator;
pub mod policy;
pub mod provider;
pub mod queue;
pub mod region;
pub mod report;
pub mod router;
pub mod scenario;
pub mod schema;
pub mod sim;
pub mod stack;
pub mod store;
pub mod tier;
pub mod vector;
pub mod wire;
pub mod worker;
pub mod workflow;
