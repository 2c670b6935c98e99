//! `cluebridge store`: maintenance of a stopped node's store.

use crate::store::Store;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Rebuild a stopped node's index (sled) and live state (the queues,
    /// whose snapshots are dropped) from its journal, archived files
    /// included. The journal is the store's truth; the index and the
    /// snapshots only speed up reads and starts, so this loses nothing. A
    /// node also rebuilds a missing or damaged index, and replays past a
    /// damaged snapshot, at start.
    Reindex(ReindexArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReindexArgs {
    /// The node's data directory (`data_dir` in its node file). The node
    /// must be stopped.
    #[arg(long)]
    pub data_dir: PathBuf,
}

pub fn run(args: StoreArgs) -> Result<()> {
    match args.command {
        StoreCommand::Reindex(a) => reindex(a),
    }
}

fn reindex(args: ReindexArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let counts = Store::reindex(&args.data_dir).with_context(|| {
        format!(
            "cannot rebuild the index of {} (is its node still running? stop it first)",
            args.data_dir.display()
        )
    })?;
    println!(
        "rebuilt the index and the live state of {} from its journal in {:.1} s: {} sent, {} in custody, {} receipts, {} audit entries, {} queued for peers",
        args.data_dir.display(),
        started.elapsed().as_secs_f64(),
        counts.sent,
        counts.inbound,
        counts.receipts,
        counts.audit,
        counts.outbox
    );
    Ok(())
}
