//! `kb-worker serve`'s engine loading, through an in-process worker.

use crate::test_support::serve;
use kb_config::CpuScreen;
use serde_json::json;

/// Stores one document through the API and answers whether its collection's index
/// keeps a bf16 screen.
async fn screened_with(screen: CpuScreen) -> bool {
    let (_tmp, state, url) = serve(|cfg| cfg.index.cpu_screen = screen).await;
    let doc = json!({"documents": [{"id": "d1", "text": "screened or not"}]});
    let status = reqwest::Client::new()
        .post(format!("{url}/v1/collections/c/documents"))
        .json(&doc)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let engine = state.engine().unwrap();
    let index = engine.store.index();
    let (_, collection) = index.collections().next().unwrap();
    collection.is_screened()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_cpu_screen_reaches_the_collections() {
    assert!(screened_with(CpuScreen::Bf16).await);
    assert!(!screened_with(CpuScreen::None).await);
}
