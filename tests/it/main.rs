//! The one integration-test binary: every test drives the real `faultline` binary against real
//! processes, sockets and filesystems. Helpers live in `support.rs` (TLS agents in
//! `support/agent.rs`); one module per area.

mod support;

mod actions;
mod agent_binary;
mod agent_core;
mod agent_edge;
mod agents;
mod attack_core;
mod attack_kinds;
mod containers;
mod coordinator;
mod deploy;
mod disk_fill;
mod early_end;
mod examples;
mod fanout;
mod fuzz;
mod gameday;
mod gate;
mod hardening;
mod history;
mod html;
mod latency;
mod measured;
mod netem_absent;
mod netfaults;
mod notify;
mod outage;
mod probes_grpc;
mod probes_http;
mod prometheus;
mod reports;
mod stress;
mod validate;
mod vars;
mod verdicts;
mod web;
