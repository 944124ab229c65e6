//! End-to-end tests, one binary: the real `push-dispatch` binary against the
//! real Pub/Sub emulator (`PUBSUB_EMULATOR_HOST`, started by `make test`)
//! and the sandbox. One module per area; the harness is [`common`]. The
//! logic of every guarantee is also tested in process, in milliseconds, in
//! `crates/worker/tests/guarantees.rs`: these tests are for the wiring.

mod chaos;
mod cli;
mod common;
mod contract;
mod day_one;
mod fleet;
mod observability;
mod pipeline;
mod providers;
