//! Leader election on a Lease: one holder at a time, renewal, expiry and hand-over.

use k8s_openapi::api::coordination::v1::Lease;
use kb_operator::leader::{LeaderElector, LeaseConfig};
use kube::{Api, Client};
use kube_fake_client::ClientBuilder;
use std::time::Duration;

fn candidate(client: &Client, identity: &str, duration: Duration) -> LeaderElector {
    LeaderElector::new(
        client.clone(),
        LeaseConfig {
            name: "kb-operator-leader".into(),
            namespace: "kb-system".into(),
            identity: identity.into(),
            duration,
        },
    )
}

#[tokio::test]
async fn only_one_candidate_holds_the_lease_and_renews_it() {
    let client = ClientBuilder::new().build().await.unwrap();
    let a = candidate(&client, "operator-a", Duration::from_secs(30));
    let b = candidate(&client, "operator-b", Duration::from_secs(30));
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    assert!(!b.try_acquire_or_renew().await.unwrap());
}

#[tokio::test]
async fn released_lease_is_taken_over_at_once() {
    let client = ClientBuilder::new().build().await.unwrap();
    let a = candidate(&client, "operator-a", Duration::from_secs(30));
    let b = candidate(&client, "operator-b", Duration::from_secs(30));
    assert!(a.try_acquire_or_renew().await.unwrap());
    a.release().await.unwrap();
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert!(!a.try_acquire_or_renew().await.unwrap());
}

#[tokio::test]
async fn expired_lease_is_taken_over() {
    let client = ClientBuilder::new().build().await.unwrap();
    let a = candidate(&client, "operator-a", Duration::from_secs(1));
    let b = candidate(&client, "operator-b", Duration::from_secs(1));
    assert!(a.try_acquire_or_renew().await.unwrap());
    // b sees a's record now, and takes over only a lease duration of its own clock later.
    assert!(!b.try_acquire_or_renew().await.unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "a stopped renewing"
    );
}

#[tokio::test]
async fn expiry_is_measured_on_the_candidates_clock_not_the_holders() {
    // The holder's clock is far behind: its renewTime says the Lease expired long ago.
    // A candidate must still wait a full duration after it saw the record.
    let client = ClientBuilder::new().build().await.unwrap();
    let b = candidate(&client, "operator-b", Duration::from_secs(1));
    let api: Api<Lease> = Api::namespaced(client.clone(), "kb-system");
    let stale = serde_json::json!({
        "metadata": {"name": "kb-operator-leader"},
        "spec": {"holderIdentity": "operator-a", "leaseDurationSeconds": 1,
                 "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 0},
    });
    api.create(&Default::default(), &serde_json::from_value(stale).unwrap())
        .await
        .unwrap();
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "taken at once on the holder's clock"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(b.try_acquire_or_renew().await.unwrap());
}
