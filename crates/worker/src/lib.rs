//! The push-dispatch worker: the policy of SPEC §5 applied to every message
//! the streams of `crates/subscriber` hand out.
//!
//! A message goes `decode → check → send every target → plan → outbox →
//! settle`:
//!
//! | module | what it is for |
//! |---|---|
//! | [`pipeline`] | the data path in one place: [`Worker::process`] and the books it keeps |
//! | [`plan`] | the decisions, pure: `plan(results) → Plan`, `settle(Plan, report) → Settlement` |
//! | [`outbox`] | where the plan's publishes go: Pub/Sub, or memory for tests |
//! | [`letters`] | a dead letter or a republished remainder as a Pub/Sub message |
//! | [`results`] | the `PushResult` of a settlement (`results.topic`), pure |
//! | [`provider`] | one app and platform: dispatcher, circuit, guard, rate limit, send loop |
//! | [`context`], [`target`] | what is known of a message, and of each target's send |
//! | [`circuit`], [`guard`], [`rate_limit`] | the controls of one provider |
//! | [`assemble`], [`preflight`] | from the config to providers and outbox; `check-config` |
//! | [`run`](run()), [`shutdown`], [`health`] | the lifecycle: streams, drain, readiness |
//! | [`metrics`], [`labels`] | Prometheus metrics and their closed label sets |
//!
//! It is not the transport (`crates/dispatch`), nor Pub/Sub plumbing
//! (`crates/subscriber`), nor the wire contract (`crates/proto`).

pub mod assemble;
pub mod circuit;
pub mod context;
pub mod coordinated;
pub mod dedup;
pub mod fleet;
pub mod fleet_rate;
pub mod guard;
pub mod health;
pub mod labels;
pub mod letters;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod plan;
pub mod preflight;
pub mod provider;
pub mod rate_limit;
pub mod results;
mod run;
pub mod shutdown;
pub mod target;

pub use assemble::build_apps;
pub use labels::MessageResult;
pub use pipeline::{Settle, Worker, WorkerSettings};
pub use preflight::{CredentialCheck, check_credentials};
pub use provider::App;
pub use run::{RunError, run};
pub use shutdown::Shutdown;
