//! Integration tests of the sandbox through real HTTP/2 clients (reqwest,
//! gcp_auth), one binary for all of them to keep link time down.

mod apns;
mod common;
mod faults;
mod fcm;
mod inspect;
