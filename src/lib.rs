//! agentdrill: chaos and disaster-recovery drills for AI-agent stacks.
//!
//! A simulated agent stack (orchestrator, workers, fake payment and email
//! APIs, a vector store, LLM provider mocks, two regions) runs under
//! injected faults on a deterministic simulator; RTO, RPO and duplicate side
//! effects are measured from ground truth and compared with the recovery
//! tier the stack claims. See `ARCHITECTURE.md` for the map.
//!
//! The folders show the architecture:
//! - [`components`]: the sans-IO components (orchestrator, worker, ledgers,
//!   providers, router, vector store, …) shared by every runtime;
//! - [`sim`]: the deterministic simulator runtime and the simulated stack;
//! - [`live`]: the live runtime: the fakes over real HTTP on 127.0.0.1
//!   (`agentdrill serve`), their script, toxics and control API;
//! - [`drill`]: scenarios, loading, measurement, invariants and the verdict;
//! - [`fuzz`]: generated drills, shrinking and reproducers;
//! - [`report`]: tables, JSON, JUnit, Markdown, `explain` and the HTML report;
//! - [`gameday`]: drill programmes by cadence and the blind exercise;
//! - [`history`]: the drill history and its trends;
//! - [`heap`]: the counting allocator (drill memory budgets, bench peaks);
//! - [`bench`](mod@bench): `agentdrill bench`.

#![warn(missing_docs)]

pub mod bench;
pub mod components;
pub mod drill;
pub mod fuzz;
pub mod gameday;
pub mod heap;
pub mod history;
pub mod live;
pub mod par;
pub mod report;
pub mod sim;
