//! Snapshots and seeks, for disaster recovery (`push-dispatch snapshot`).
//!
//! Before a risky deploy, a snapshot of the dispatch subscription records
//! which messages are still unacked; after a bad deploy that acked what it
//! should not have, seeking the subscription back to the snapshot makes
//! Pub/Sub deliver them again. Seeking to a time does the same from the
//! topic's (or subscription's) retention, e.g. to replay feedback a consumer
//! missed. Pub/Sub keeps a snapshot at most 7 days (less when the
//! subscription already holds old messages).

use std::time::SystemTime;

use google_cloud_wkt::Timestamp;

use crate::{Clients, subscription_name};

/// A snapshot call failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Pub/Sub refused or failed.
    #[error("cannot {action} {resource}: {source}")]
    Api {
        /// What was tried.
        action: &'static str,
        /// The snapshot or subscription.
        resource: String,
        /// The SDK's error.
        #[source]
        source: google_cloud_pubsub::Error,
    },
    /// The seek time cannot be a protobuf timestamp.
    #[error("the seek time is out of range; give an RFC 3339 time such as 2026-12-03T10:00:00Z")]
    TimeOutOfRange,
}

/// One snapshot, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Full name.
    pub name: String,
    /// The topic it retains messages of.
    pub topic: String,
    /// When Pub/Sub deletes it (RFC 3339), if it says.
    pub expires: Option<String>,
}

/// `projects/{project}/snapshots/{snapshot}`.
pub fn snapshot_name(project: &str, snapshot: &str) -> String {
    format!("projects/{project}/snapshots/{snapshot}")
}

/// Where a seek goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeekTarget {
    /// To a snapshot (its short name).
    Snapshot(String),
    /// To a time: messages published after it are delivered again (acked
    /// ones only as far as retention keeps them).
    Time(SystemTime),
}

/// Snapshots `subscription` (short name) as `snapshot` (short name).
pub async fn create(
    clients: &Clients,
    project: &str,
    snapshot: &str,
    subscription: &str,
) -> Result<SnapshotInfo, SnapshotError> {
    let name = snapshot_name(project, snapshot);
    let created = clients
        .subscriptions
        .create_snapshot()
        .set_name(name.clone())
        .set_subscription(subscription_name(project, subscription))
        .send()
        .await
        .map_err(|source| SnapshotError::Api {
            action: "create snapshot",
            resource: name,
            source,
        })?;
    Ok(info(created))
}

/// Seeks `subscription` (short name) to `target`.
pub async fn seek(
    clients: &Clients,
    project: &str,
    subscription: &str,
    target: &SeekTarget,
) -> Result<(), SnapshotError> {
    let sub = subscription_name(project, subscription);
    let request = clients.subscriptions.seek().set_subscription(sub.clone());
    let request = match target {
        SeekTarget::Snapshot(s) => request.set_snapshot(snapshot_name(project, s)),
        SeekTarget::Time(t) => {
            let t = Timestamp::try_from(*t).map_err(|_| SnapshotError::TimeOutOfRange)?;
            request.set_time(t)
        }
    };
    request
        .send()
        .await
        .map(drop)
        .map_err(|source| SnapshotError::Api {
            action: "seek",
            resource: sub,
            source,
        })
}

/// Deletes a snapshot (short name).
pub async fn delete(clients: &Clients, project: &str, snapshot: &str) -> Result<(), SnapshotError> {
    let name = snapshot_name(project, snapshot);
    clients
        .subscriptions
        .delete_snapshot()
        .set_snapshot(name.clone())
        .send()
        .await
        .map_err(|source| SnapshotError::Api {
            action: "delete snapshot",
            resource: name,
            source,
        })
}

/// The project's snapshots.
pub async fn list(clients: &Clients, project: &str) -> Result<Vec<SnapshotInfo>, SnapshotError> {
    let mut out = Vec::new();
    let mut page = String::new();
    loop {
        let listed = clients
            .subscriptions
            .list_snapshots()
            .set_project(format!("projects/{project}"))
            .set_page_token(page.clone())
            .send()
            .await
            .map_err(|source| SnapshotError::Api {
                action: "list snapshots of",
                resource: format!("projects/{project}"),
                source,
            })?;
        out.extend(listed.snapshots.into_iter().map(info));
        if listed.next_page_token.is_empty() {
            return Ok(out);
        }
        page = listed.next_page_token;
    }
}

fn info(s: google_cloud_pubsub::model::Snapshot) -> SnapshotInfo {
    SnapshotInfo {
        name: s.name,
        topic: s.topic,
        expires: s.expire_time.map(String::from),
    }
}
