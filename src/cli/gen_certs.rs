//! `cluebridge gen-certs`: keys and certificates for a real federation.

use crate::provision::{self, Existing, Options};
use anyhow::Result;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Makes, from federation.toml and the node files that point at it:
  - the federation CA (ca_cert, and its key beside it as <name>-key.pem),
    unless both exist, in which case it issues from the existing CA;
  - each node's Ed25519 signing key (signing_key) and TLS certificate and
    key (tls_cert, tls_key) at the paths its node file names;
  - a client certificate for every [[principal]] of a node file, at
    clients/<node-id>/<name>.pem and <name>-key.pem beside federation.toml.
It writes each node's public signing key into federation.toml (comments are
kept). Private keys are written with mode 0600, directories it makes 0700;
a node refuses to start with a key that group or others can read.

Key rotation: add a [[node.key]] with a new id (and not_before) to
federation.toml, point the node file's signing_key and signing_key_id at
the new key, and run gen-certs --keep-existing.")]
pub struct GenCertsArgs {
    /// The federation trust list.
    #[arg(long, default_value = "config/federation.toml")]
    pub federation: PathBuf,
    /// A node file to provision (repeatable). Default: every node file
    /// beside federation.toml that names it.
    #[arg(long = "node", value_name = "FILE")]
    pub nodes: Vec<PathBuf>,
    /// Keep key and certificate files that exist; make only what is missing.
    #[arg(long, conflicts_with = "force")]
    pub keep_existing: bool,
    /// Replace key and certificate files that exist (not the CA).
    #[arg(long)]
    pub force: bool,
    /// Validity of node and client certificates, in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub valid_days: i64,
    /// Validity of a new CA certificate, in days.
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(i64).range(1..=36500))]
    pub ca_valid_days: i64,
}

pub fn run(args: GenCertsArgs) -> Result<()> {
    let existing = if args.force {
        Existing::Overwrite
    } else if args.keep_existing {
        Existing::Keep
    } else {
        Existing::Refuse
    };
    let options = Options {
        existing,
        ca_days: args.ca_valid_days,
        cert_days: args.valid_days,
    };
    let made = provision::gen_certs(&args.federation, &args.nodes, &options)?;
    for m in &made {
        let how = if m.kept { "kept" } else { "made" };
        println!("{how}  {:<60} {}", m.path.display(), m.what);
    }
    println!(
        "\nPrivate keys are mode 0600. Give each node its own signing key, TLS key and \
         node file, every node the same federation.toml, and each principal its client \
         certificate. Keep the CA key offline."
    );
    Ok(())
}
