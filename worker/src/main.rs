//! `kb-worker`: serve, ingest, query, backup, restore, bench, devices and openapi.

use clap::{Parser, Subcommand};
use kb_worker::cli;

#[derive(Parser)]
#[command(
    name = "kb-worker",
    version,
    about = "knowledgebase-operator data-plane worker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (embedded default: file WAL, one node).
    Serve(cli::serve::ServeArgs),
    /// Ingest files or directories into a collection.
    Ingest(cli::ingest::IngestArgs),
    /// Query a collection.
    Query(cli::query::QueryArgs),
    /// Stream a snapshot from a worker into a backup directory or S3-compatible bucket.
    Backup(cli::backup::BackupArgs),
    /// Install a backup (directory, file or s3:// URL) into a data directory.
    Restore(cli::backup::RestoreArgs),
    /// Inspect backups.
    Backups {
        #[command(subcommand)]
        command: BackupsCommand,
    },
    /// Embedding and search benchmarks (one JSON line per result).
    Bench(cli::bench::BenchArgs),
    /// The GPUs this process sees (CUDA driver), with their memory, as JSON.
    Devices,
    /// Print the API's OpenAPI 3.1 document (what `GET /openapi.json` serves), e.g. to
    /// generate a client without starting a worker.
    Openapi,
}

#[derive(Subcommand)]
enum BackupsCommand {
    /// One JSON line per backup (manifest for s3://), newest first.
    List(cli::backup::ListArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// `kb-worker devices`: `{"cuda_driver": bool, "gpus": [...], "host_memory": {...}}` on one
/// line.
fn devices() -> anyhow::Result<()> {
    // Both views: the CUDA driver's (cudarc) and libtorch's, with the reason when they
    // disagree.
    let views = kb_worker::gpu::DeviceViews::probe();
    let mut report = serde_json::to_value(&views)?;
    report["summary"] = serde_json::Value::String(views.explain());
    // What a CPU index may grow into (see `kb_worker::host`).
    let host = kb_worker::host::HostMemory::probe();
    report["host_memory"] = serde_json::json!({
        "limit_bytes": host.limit,
        "working_set_bytes": host.working_set,
        "machine_available_bytes": host.machine_available,
        "available_bytes": host.available(),
    });
    println!("{report}");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging();
    let result = match Cli::parse().command {
        Command::Serve(args) => cli::serve::run(args).await,
        Command::Ingest(args) => cli::ingest::run(args).await,
        Command::Query(args) => cli::query::run(args).await,
        Command::Backup(args) => cli::backup::run(args).await,
        Command::Restore(args) => cli::backup::restore(args).await,
        Command::Backups {
            command: BackupsCommand::List(args),
        } => cli::backup::list(args).await,
        Command::Bench(args) => cli::bench::run(args).await,
        Command::Devices => devices(),
        Command::Openapi => {
            println!("{}", kb_worker::api::openapi::document());
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A user-facing message with its causes, not a backtrace.
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
