//! `snapshot create|seek|list|delete`: disaster recovery on a subscription
//! (the dispatch subscription by default), through
//! `push_dispatch_subscriber::snapshot`.

use std::path::Path;

use push_dispatch_subscriber::Clients;
use push_dispatch_subscriber::snapshot::{self, SeekTarget};

use super::{Failure, load, runtime};
use crate::cli::SnapshotCommand;

/// `snapshot …`: prints what it did.
pub async fn snapshot(path: &Path, cmd: SnapshotCommand) -> Result<(), Failure> {
    let config = load(path)?;
    let clients = Clients::connect(config.pubsub.emulator_host.as_deref())
        .await
        .map_err(runtime)?;
    let project = &config.project_id;
    let default_sub = |s: Option<String>| s.unwrap_or_else(|| config.pubsub.subscription.clone());
    match cmd {
        SnapshotCommand::Create { name, subscription } => {
            let sub = default_sub(subscription);
            let s = snapshot::create(&clients, project, &name, &sub)
                .await
                .map_err(runtime)?;
            println!(
                "snapshot {} of subscription {sub} created; expires {}",
                s.name,
                s.expires.as_deref().unwrap_or("(not said)")
            );
        }
        SnapshotCommand::Seek {
            name,
            time,
            subscription,
        } => {
            let sub = default_sub(subscription);
            let target = match (name, time) {
                (Some(name), _) => SeekTarget::Snapshot(name),
                (None, Some(time)) => SeekTarget::Time(time),
                (None, None) => {
                    return Err(Failure::Config(anyhow::anyhow!(
                        "give the snapshot to seek to, or --time RFC3339"
                    )));
                }
            };
            snapshot::seek(&clients, project, &sub, &target)
                .await
                .map_err(runtime)?;
            println!(
                "subscription {sub} sought to {target:?}: what was acked after it is delivered again"
            );
        }
        SnapshotCommand::List => {
            for s in snapshot::list(&clients, project).await.map_err(runtime)? {
                println!(
                    "{}  topic {}  expires {}",
                    s.name,
                    s.topic,
                    s.expires.as_deref().unwrap_or("-")
                );
            }
        }
        SnapshotCommand::Delete { name } => {
            snapshot::delete(&clients, project, &name)
                .await
                .map_err(runtime)?;
            println!("snapshot {name} deleted");
        }
    }
    Ok(())
}
