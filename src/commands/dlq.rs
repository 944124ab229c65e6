//! `dlq peek`, `dlq replay` and `dlq purge`: the dead-letter inspection
//! subscription, through `push_dispatch_subscriber::dlq`.

use std::path::Path;

use anyhow::anyhow;
use push_dispatch_subscriber::{Clients, Names};

use super::{Failure, load, runtime};
use crate::cli::DlqCommand;

/// `dlq peek`, `dlq replay` and `dlq purge`: the work is in
/// `push_dispatch_subscriber::dlq`; this prints what it did.
pub async fn dlq(path: &Path, cmd: DlqCommand) -> Result<(), Failure> {
    use push_dispatch_subscriber::dlq::{RestSubscriber, describe};
    let config = load(path)?;
    let names = Names::from_config(&config);
    let rest = RestSubscriber::new(config.pubsub.emulator_host.as_deref()).map_err(runtime)?;
    let sub = &names.dead_letter_subscription;
    match cmd {
        DlqCommand::Peek { max } => {
            let messages = rest.pull_up_to(sub, max).await.map_err(runtime)?;
            for m in &messages {
                print!("{}", describe(m));
            }
            println!(
                "{} message(s) shown from {sub}; none removed",
                messages.len()
            );
            let ids: Vec<String> = messages.into_iter().map(|m| m.ack_id).collect();
            rest.release(sub, &ids).await.map_err(runtime)?;
            Ok(())
        }
        DlqCommand::Purge {
            max,
            push_error,
            all: _,
            dry_run,
        } => {
            let chosen = rest
                .pull_chosen(sub, max, push_error.as_deref())
                .await
                .map_err(runtime)?;
            let verb = if dry_run { "would delete" } else { "deleting" };
            for m in &chosen {
                print!("{verb} {}", describe(m));
            }
            if dry_run {
                let ids: Vec<String> = chosen.into_iter().map(|m| m.ack_id).collect();
                rest.release(sub, &ids).await.map_err(runtime)?;
                println!(
                    "{} message(s) would be deleted (dry run); none removed",
                    ids.len()
                );
            } else {
                let n = rest.purge(sub, chosen).await.map_err(runtime)?;
                println!("{n} message(s) deleted from {sub}");
            }
            Ok(())
        }
        DlqCommand::Replay {
            max,
            push_error,
            dry_run,
        } => {
            let chosen = rest
                .pull_chosen(sub, max, push_error.as_deref())
                .await
                .map_err(runtime)?;
            if dry_run {
                for m in &chosen {
                    print!("would replay {}", describe(m));
                }
                println!(
                    "{} message(s) would be replayed (dry run); none removed",
                    chosen.len()
                );
                let ids: Vec<String> = chosen.into_iter().map(|m| m.ack_id).collect();
                rest.release(sub, &ids).await.map_err(runtime)?;
                return Ok(());
            }
            let clients = Clients::connect(config.pubsub.emulator_host.as_deref())
                .await
                .map_err(runtime)?;
            let publisher = clients
                .publisher(
                    &names.requests_topic,
                    std::time::Duration::from_secs(30),
                    std::time::Duration::from_millis(5),
                )
                .await
                .map_err(runtime)?;
            let report = rest
                .replay(sub, chosen, &publisher, &names.requests_topic)
                .await
                .map_err(runtime)?;
            for (from, to) in &report.replayed {
                println!("replayed {from} as {to}");
            }
            for (from, e) in &report.failed {
                eprintln!("could not replay {from}: {e}");
            }
            println!(
                "{} message(s) replayed onto {}",
                report.replayed.len(),
                names.requests_topic
            );
            if report.failed.is_empty() {
                Ok(())
            } else {
                Err(runtime(anyhow!(
                    "{} message(s) could not be replayed and stay in {sub}",
                    report.failed.len()
                )))
            }
        }
    }
}
