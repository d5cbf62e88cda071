//! The workers' ServiceAccount: no API access, no mounted token.

use super::names::{Component, Names};
use super::Child;
use k8s_openapi::api::core::v1::ServiceAccount;

pub(super) fn build(names: &Names) -> Child {
    Child::ServiceAccount(ServiceAccount {
        metadata: names.meta(names.worker(), Component::Worker),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    })
}
