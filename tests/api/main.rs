#![recursion_limit = "256"]
//! HTTP tests through the router on the embedded adapters (no network).

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod cache;
mod errors;
mod orders;
mod process;
mod users;
