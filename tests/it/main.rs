//! Integration tests: real nodes on 127.0.0.1:0 with real certificates in
//! a temporary directory. One test binary; `harness` holds the federation.

mod approval;
mod archive;
mod audit;
mod bad_input;
mod batch_receipts;
mod bench_cmd;
mod cases;
mod cli_ops;
mod config_files;
mod connections;
mod console;
mod crash;
#[cfg(unix)]
mod crash_points;
mod custody;
mod deploy_files;
mod disk_failure;
#[cfg(unix)]
mod file_modes;
mod followups;
mod forge;
mod forwarding;
mod harness;
mod hostile;
mod identities;
mod message_path;
mod operations;
mod properties;
mod raw;
mod rectification;
mod refusals;
mod reindex;
mod session;
mod strangers;
