//! The client Service and the headless Service of the workers.

use super::names::{Component, Names, HTTP_PORT, METRICS_PORT};
use super::Child;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// ClusterIP Service `<name>` clients use.
pub(super) fn client(names: &Names) -> Child {
    Child::Service(Service {
        metadata: names.meta(names.base.clone(), Component::Worker),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(names.selector(Component::Worker)),
            ports: Some(worker_ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// Headless Service `<name>-headless`: stable pod DNS, and peers that are not ready yet
/// (a new replica fetches a snapshot from a peer before it is ready itself).
pub(super) fn headless(names: &Names) -> Child {
    let mut metadata = names.meta(names.headless(), Component::Worker);
    // The one worker Service a ServiceMonitor scrapes, so each pod is scraped once.
    metadata.labels.get_or_insert_with(Default::default).insert(
        super::monitoring::SCRAPE_LABEL.to_string(),
        "true".to_string(),
    );
    Child::Service(Service {
        metadata,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(names.selector(Component::Worker)),
            ports: Some(worker_ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

fn worker_ports() -> Vec<ServicePort> {
    vec![port("http", HTTP_PORT), port("metrics", METRICS_PORT)]
}

pub(super) fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port: number,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}
