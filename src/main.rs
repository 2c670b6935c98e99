//! The `cluebridge` binary: parse the command line and dispatch.

use clap::Parser;

// Nodes allocate many small, short-lived buffers per message (protobuf,
// TLS records, sled pages); mimalloc spends less time on them than the
// system allocator. It is built without transparent huge pages
// (`no_thp`): with them, every 2 MiB page it touched stayed resident.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cluebridge::cli::Cli::parse();
    cluebridge::cli::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cluebridge::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Errors may quote what a node or a file said: escaped.
            eprintln!(
                "error: {}",
                cluebridge::cli::escape_block(&format!("{e:#}"))
            );
            std::process::ExitCode::FAILURE
        }
    }
}
