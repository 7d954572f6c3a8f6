#![recursion_limit = "256"]
//! seckill — a flash-sale (秒杀) backend that never oversells and never loses
//! an order.
//!
//! The crate is laid out by architecture: `domain` holds the rules with no I/O,
//! `service` the use cases written against ports, `store`, `cache` and `mq` the
//! ports with their embedded and real adapters, `http` the HTTP edge, `worker`
//! the background consumers, and `app` the one place that wires concrete
//! adapters together. The binary (`src/main.rs`) only parses the command line.

pub mod app;
pub mod cache;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod drill;
pub mod http;
pub mod memory;
pub mod mq;
pub mod process_lock;
pub mod server;
pub mod service;
pub mod store;
pub mod worker;
