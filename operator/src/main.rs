//! `kb-operator`: `crd`, `render -f FILE`, `run`.

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use kb_operator::controller::Scope;
use kb_operator::crd::KnowledgeBase;
use kb_operator::http::{self, Probes};
use kb_operator::leader::{LeaderElector, LeaseConfig};
use kb_operator::metrics::Metrics;
use kb_operator::reconcile::{build, dereference, validate, Context};
use kube::CustomResourceExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "kb-operator",
    version,
    about = "Reconciles KnowledgeBase resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the KnowledgeBase CustomResourceDefinition as YAML.
    Crd {
        /// Print the chart's template instead (`charts/knowledgebase-operator/templates/
        /// crd.yaml`): installed and upgraded by helm, kept on uninstall.
        #[arg(long)]
        chart: bool,
    },
    /// Print, offline, every child object of a KnowledgeBase as multi-document YAML.
    Render {
        /// KnowledgeBase manifest.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Namespace used when the manifest has none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Run the controller.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        default_value = "0.0.0.0:8080",
        env = "KB_OPERATOR_METRICS_LISTEN"
    )]
    metrics_listen: String,
    /// Compete for a Lease and reconcile only while holding it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    #[arg(long, default_value = "kb-operator-leader")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader keeps the Lease without renewing it.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// KnowledgeBases whose workers the operator itself may roll at once (a new default
    /// worker image or pod template after an operator upgrade); changes a spec asks for
    /// are never held back.
    #[arg(long, default_value_t = 1, env = "KB_OPERATOR_MAX_CONCURRENT_UPGRADES")]
    max_concurrent_upgrades: usize,
    /// Reconcile only the KnowledgeBases of these namespaces (comma-separated), with every
    /// list and watch namespaced, so a Role in each is all the operator needs. Empty: the
    /// whole cluster.
    #[arg(long, env = "KB_OPERATOR_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .json()
        .init();
    match Cli::parse().command {
        Command::Crd { chart: false } => {
            print!("{}", serde_yaml::to_string(&KnowledgeBase::crd())?);
            Ok(())
        }
        Command::Crd { chart: true } => {
            print!("{}", kb_operator::crd::chart_template()?);
            Ok(())
        }
        Command::Render { file, namespace } => render(&file, &namespace),
        Command::Run(args) => run(args).await,
    }
}

fn render(file: &PathBuf, namespace: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let kb: KnowledgeBase =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    if let Err(invalid) = validate::check(&kb, &[]) {
        bail!("{}: {}", invalid.reason, invalid.message);
    }
    let inputs = dereference::offline(&kb, namespace)?;
    let plan = build::plan(&kb, &inputs);
    if plan.children.is_empty() {
        eprintln!("spec.paused is true: the operator leaves every child as it is");
    }
    for child in &plan.children {
        println!("---");
        print!("{}", serde_yaml::to_string(&child.to_json())?);
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // One process-wide TLS provider, whatever else the dependency graph compiles in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(forward_signals(stop.clone()));
    let listener = tokio::net::TcpListener::bind(&args.metrics_listen).await?;
    let probes = Probes {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let server = tokio::spawn(http::serve(listener, probes, wait(stopped.clone())));
    // A standby replica is healthy and ready: it is doing its job by waiting for the Lease.
    ready.store(true, Ordering::Relaxed);
    let elector = match args.leader_election {
        true => Some(Arc::new(LeaderElector::new(
            client.clone(),
            lease_config(&args)?,
        ))),
        false => None,
    };
    if let Some(elector) = &elector {
        if !acquire(elector, stopped.clone()).await? {
            return Ok(());
        }
        tokio::spawn(keep_lease(elector.clone(), stop.clone()));
    }
    let mut ctx = Context::new(client, metrics);
    ctx.rollouts = kb_operator::reconcile::upgrade::Rollouts::new(args.max_concurrent_upgrades);
    let ctx = Arc::new(ctx);
    let scope = Scope::new(args.namespaces);
    tracing::info!(?scope, "reconciling");
    kb_operator::controller::run(ctx, &scope, wait(stopped)).await;
    if let Some(elector) = elector {
        elector.release().await.context("releasing the lease")?;
    }
    let _ = stop.send(true);
    server.await??;
    Ok(())
}

fn lease_config(args: &RunArgs) -> anyhow::Result<LeaseConfig> {
    let identity = match &args.identity {
        Some(identity) => identity.clone(),
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .context("--identity (or POD_NAME) is required outside a pod")?,
    };
    Ok(LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity,
        duration: Duration::from_secs(args.lease_duration_seconds),
    })
}

/// Waits for the Lease; false when asked to stop first.
async fn acquire(
    elector: &LeaderElector,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "lease request failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(elector.renew_period()) => {}
            _ = stopped.wait_for(|s| *s) => return Ok(false),
        }
    }
}

/// Renews the Lease; on losing it, stops the controller (the pod restarts as a standby).
/// A failed renewal is retried while the Lease is still comfortably ours.
async fn keep_lease(elector: Arc<LeaderElector>, stop: watch::Sender<bool>) {
    let mut renewed = std::time::Instant::now();
    loop {
        tokio::time::sleep(elector.renew_period()).await;
        // A renewal that hangs must not keep this replica leading past its lease.
        let attempt = tokio::time::timeout(elector.renew_period(), elector.try_acquire_or_renew());
        let result = match attempt.await {
            Ok(result) => result.map_err(anyhow::Error::from),
            Err(_) => Err(anyhow::anyhow!(
                "no answer within {:?}",
                elector.renew_period()
            )),
        };
        match result {
            Ok(true) => {
                renewed = std::time::Instant::now();
                continue;
            }
            Ok(false) => tracing::error!("lost the lease; stopping"),
            Err(error) if renewed.elapsed() < elector.renew_period() * 2 => {
                tracing::warn!(%error, "lease renewal failed; retrying");
                continue;
            }
            Err(error) => tracing::error!(%error, "could not renew the lease; stopping"),
        }
        let _ = stop.send(true);
        return;
    }
}

async fn wait(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

async fn forward_signals(stop: watch::Sender<bool>) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    let _ = stop.send(true);
}
