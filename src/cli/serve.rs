//! `cluebridge serve`: one node, until SIGINT or SIGTERM.

use anyhow::Context;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The node file, e.g. config/discipline.toml. It names the trust list,
    /// the listen address, the data directory, keys and certificates.
    #[arg(long, short, env = "CLUEBRIDGE_CONFIG")]
    pub config: PathBuf,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before anything is created: the store's files are the node's alone.
    crate::file_modes::restrict_umask();
    let config = crate::config::NodeConfig::load(&args.config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    crate::node::run(config, listener, super::shutdown_signal()).await?;
    Ok(())
}
