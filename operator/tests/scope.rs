//! Where the operator looks: a namespaced operator (`--namespaces`, the chart's
//! `watchNamespaces`) sends only namespaced lists and watches, which is what lets a Role in
//! each namespace stand in for the ClusterRole. The API server here records every path it
//! is asked for and answers with empty lists.

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use kb_operator::controller::{self, Scope};
use kb_operator::metrics::Metrics;
use kb_operator::reconcile::Context;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Seen = Arc<Mutex<BTreeSet<String>>>;

async fn answer(State(seen): State<Seen>, request: Request) -> impl IntoResponse {
    let uri = request.uri();
    seen.lock().unwrap().insert(uri.path().to_string());
    if uri.query().is_some_and(|q| q.contains("watch=true")) {
        // A watch with no event: held open until the controller stops.
        tokio::time::sleep(Duration::from_secs(60)).await;
        return String::new();
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": "1"},
        "items": []
    })
    .to_string()
}

/// The paths a controller of `scope` asks for in its first second.
async fn paths_requested(scope: Scope) -> BTreeSet<String> {
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(seen.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::new(format!("http://{address}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let ctx = Arc::new(Context::new(client, Arc::new(Metrics::default())));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        controller::run(ctx, &scope, async move {
            let _ = stopped.await;
        })
        .await
    });
    // Every list and watch starts at once: wait until no new path has come for half a
    // second (or 10 s in all).
    let mut last = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = seen.lock().unwrap().len();
        if now > 0 && now == last {
            break;
        }
        last = now;
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the controller stops when asked")
        .unwrap();
    server.abort();
    let paths = seen.lock().unwrap().clone();
    paths
}

#[tokio::test]
async fn a_namespaced_operator_lists_and_watches_only_its_namespaces() {
    let scope = Scope::new(vec!["team-b".into(), " team-a".into(), "team-a".into()]);
    assert_eq!(
        scope,
        Scope::Namespaces(vec!["team-a".into(), "team-b".into()])
    );
    let paths = paths_requested(scope).await;
    let outside: Vec<&String> = paths
        .iter()
        .filter(|p| !p.contains("/namespaces/team-a/") && !p.contains("/namespaces/team-b/"))
        .collect();
    assert!(outside.is_empty(), "cluster-wide requests: {outside:?}");
    for namespace in ["team-a", "team-b"] {
        for path in [
            format!("/apis/knowledge.dev/v1alpha1/namespaces/{namespace}/knowledgebases"),
            format!("/api/v1/namespaces/{namespace}/secrets"),
            format!("/apis/apps/v1/namespaces/{namespace}/statefulsets"),
            format!("/apis/batch/v1/namespaces/{namespace}/jobs"),
        ] {
            assert!(paths.contains(&path), "{path} not watched: {paths:?}");
        }
    }
}

#[tokio::test]
async fn without_namespaces_the_operator_watches_the_whole_cluster() {
    assert_eq!(Scope::new(vec![String::new()]), Scope::Cluster);
    let paths = paths_requested(Scope::Cluster).await;
    assert!(
        paths.contains("/apis/knowledge.dev/v1alpha1/knowledgebases"),
        "{paths:?}"
    );
    assert!(paths.contains("/api/v1/secrets"), "{paths:?}");
    assert!(
        paths.iter().all(|p| !p.contains("/namespaces/")),
        "{paths:?}"
    );
}
