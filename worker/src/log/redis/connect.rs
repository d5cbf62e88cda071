//! Connecting to Redis: the fred configuration for each topology (standalone, Sentinel,
//! Cluster), password, TLS with the system roots or a private CA, and the two clients a
//! replica uses.

use super::RedisLogError;
use fred::prelude::*;
use fred::types::config::{ReconnectPolicy, ServerConfig, TlsConnector};
use kb_config::{RedisConfig, RedisMode};
use std::time::Duration;

/// Builds a fred config from the worker's Redis settings.
pub(super) fn fred_config(cfg: &RedisConfig) -> Result<Config, RedisLogError> {
    // fred builds its default TLS config (for `rediss://` and `tls: true`) with rustls'
    // process-level provider, which rustls cannot choose by itself when the build links
    // both of its backends (the workspace's other crates bring aws-lc-rs). Ours is ring;
    // an error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = match cfg.mode {
        RedisMode::Standalone => {
            let url = cfg
                .url
                .as_deref()
                .ok_or_else(|| RedisLogError::Config("redis.url is required".into()))?;
            Config::from_url(url).map_err(|e| RedisLogError::Config(format!("{url}: {e}")))?
        }
        RedisMode::Cluster => Config {
            server: ServerConfig::new_clustered(hosts(&cfg.nodes)?),
            ..Config::default()
        },
        RedisMode::Sentinel => Config {
            server: ServerConfig::new_sentinel(
                hosts(&cfg.nodes)?,
                cfg.sentinel_service.clone().ok_or_else(|| {
                    RedisLogError::Config("redis.sentinel_service is required".into())
                })?,
            ),
            ..Config::default()
        },
    };
    if let Some(var) = &cfg.password_env {
        let password = std::env::var(var).map_err(|_| {
            RedisLogError::Config(format!(
                "redis.password_env names {var}, which is not set in the environment"
            ))
        })?;
        config.password = Some(password);
    }
    if let Some(ca) = &cfg.tls_ca_file {
        config.tls = Some(private_ca_connector(ca)?.into());
    } else if cfg.tls && config.tls.is_none() {
        let connector = TlsConnector::default_rustls()
            .map_err(|e| RedisLogError::Config(format!("TLS setup failed: {e}")))?;
        config.tls = Some(connector.into());
    }
    Ok(config)
}

/// A TLS connector that trusts exactly the CA certificates in the PEM file `ca`.
fn private_ca_connector(ca: &std::path::Path) -> Result<TlsConnector, RedisLogError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad =
        |what: String| RedisLogError::Config(format!("redis.tls_ca_file {}: {what}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    // An explicit provider: the process may link more than one rustls backend.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config.into())
}

fn hosts(nodes: &[String]) -> Result<Vec<(String, u16)>, RedisLogError> {
    if nodes.is_empty() {
        return Err(RedisLogError::Config("redis.nodes is empty".into()));
    }
    nodes
        .iter()
        .map(|node| {
            let (host, port) = node.rsplit_once(':').ok_or_else(|| {
                RedisLogError::Config(format!("redis node {node:?} is not host:port"))
            })?;
            let port = port.parse().map_err(|_| {
                RedisLogError::Config(format!("redis node {node:?} has an invalid port"))
            })?;
            Ok((host.to_string(), port))
        })
        .collect()
}

/// A client whose commands time out after `command_timeout` and are sent at most
/// `attempts` times; it reconnects in the background.
pub(super) fn client(
    config: Config,
    command_timeout: Duration,
    attempts: u32,
) -> Result<Client, RedisLogError> {
    Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.max_command_attempts = attempts;
        })
        .with_performance_config(|p| p.default_command_timeout = command_timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()
        .map_err(RedisLogError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_ca_file_must_exist_and_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for (file, needle) in [
            (dir.path().join("missing.pem"), "missing.pem"),
            (empty, "holds no PEM certificate"),
        ] {
            let cfg = RedisConfig {
                url: Some("rediss://127.0.0.1:6379".into()),
                tls_ca_file: Some(file),
                ..RedisConfig::default()
            };
            let err = fred_config(&cfg).expect_err("a bad CA file is refused");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn tls_with_the_system_roots_builds_in_a_workspace_build() {
        // The whole workspace links two rustls backends; building the default TLS config
        // must still work (it panicked before a provider was installed explicitly).
        for (url, tls) in [
            ("rediss://127.0.0.1:6379", false),
            ("redis://127.0.0.1:6379", true),
        ] {
            let cfg = RedisConfig {
                url: Some(url.into()),
                tls,
                ..RedisConfig::default()
            };
            let config = fred_config(&cfg).unwrap();
            assert!(config.tls.is_some(), "{url} tls={tls}");
        }
    }
}
