use super::*;
use crate::api::AppState;
use crate::host::{tests::fix, HostMemory};

#[test]
fn host_memory_figures_are_exported_at_each_scrape() {
    let metrics = std::sync::Arc::new(Metrics::new());
    let state = AppState::new(
        crate::auth::Auth::open(),
        Default::default(),
        metrics.clone(),
    );
    let _fixed = fix(HostMemory {
        limit: Some(2 << 30),
        working_set: 3 << 29,
        machine_available: None,
    });
    let text = metrics.render(&state);
    assert!(
        text.contains("kb_worker_host_memory_limit_bytes 2147483648"),
        "{text}"
    );
    assert!(
        text.contains("kb_worker_host_memory_working_set_bytes 1610612736"),
        "{text}"
    );
    let _unlimited = fix(HostMemory::default());
    let text = metrics.render(&state);
    assert!(
        text.contains("kb_worker_host_memory_limit_bytes 0"),
        "{text}"
    );
}
