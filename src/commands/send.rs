//! `send`: one PushRequest from flags (or `--json FILE`) onto the requests
//! topic, refused first when the worker would dead-letter it.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, anyhow};
use push_dispatch_config::Config;
use push_dispatch_proto::v1::{Notification, Platform, Priority, PushRequest, Target};
use push_dispatch_proto::{Encoding, encode_message};
use push_dispatch_subscriber::publish::publish_confirmed;
use push_dispatch_subscriber::{Clients, Names};

use super::{Failure, load, runtime};
use crate::cli::{PlatformArg, PriorityArg, SendArgs};

/// `send`: builds a PushRequest from the flags (or `--json`) and publishes it.
pub async fn send(path: &Path, args: SendArgs) -> Result<(), Failure> {
    let config = load(path)?;
    let request = build_request(&args).map_err(Failure::Config)?;
    if !args.no_check {
        refuse_what_would_be_dead_lettered(&request, &config).map_err(Failure::Config)?;
    }
    let encoding = if args.binary {
        Encoding::Binary
    } else {
        Encoding::Json
    };
    let body = encode_message(&request, encoding).map_err(runtime)?;
    let clients = Clients::connect(config.pubsub.emulator_host.as_deref())
        .await
        .map_err(runtime)?;
    let topic = Names::from_config(&config).requests_topic;
    let publisher = clients
        .publisher(
            &topic,
            std::time::Duration::from_secs(15),
            std::time::Duration::ZERO,
        )
        .await
        .map_err(runtime)?;
    let attrs = HashMap::from([(
        push_dispatch_proto::attributes::CONTENT_TYPE.to_string(),
        encoding.content_type().to_string(),
    )]);
    let id = publish_confirmed(&publisher, &topic, body, attrs)
        .await
        .with_context(|| {
            format!("is the topic provisioned? try `push-dispatch provision` ({topic})")
        })
        .map_err(runtime)?;
    println!("{id}");
    Ok(())
}

/// Checks the request as the worker will, against this config's apps, so
/// that a typo is an error here rather than a dead letter later.
fn refuse_what_would_be_dead_lettered(
    request: &PushRequest,
    config: &Config,
) -> anyhow::Result<()> {
    let apps: Vec<push_dispatch_proto::AppPlatforms> = config
        .apps
        .iter()
        .map(|a| push_dispatch_proto::AppPlatforms {
            name: a.name.clone(),
            apns: a.apns.is_some(),
            fcm: a.fcm.is_some(),
        })
        .collect();
    let hint = "fix it, or pass --no-check to publish it anyway";
    let checked = push_dispatch_proto::check(request, &apps).map_err(|e| {
        anyhow!(
            "the worker would dead-letter this request (push_error={}): {e}; {hint}",
            e.code()
        )
    })?;
    if let Some(first) = checked.rejected.first() {
        return Err(anyhow!(
            "the worker would dead-letter {} of {} targets, first (push_error={}): {first}; {hint}",
            checked.rejected.len(),
            request.targets.len(),
            first.code()
        ));
    }
    Ok(())
}

fn build_request(args: &SendArgs) -> anyhow::Result<PushRequest> {
    let mut request = match &args.json {
        Some(file) => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("cannot read the request from standard input")?;
                s
            } else {
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read --json {}", file.display()))?
            };
            serde_json::from_str::<PushRequest>(&text).with_context(|| {
                format!(
                    "--json {}: not a proto3 JSON push.v1.PushRequest",
                    file.display()
                )
            })?
        }
        None => PushRequest::default(),
    };
    if !args.tokens.is_empty() {
        let platform = match args.platform {
            Some(PlatformArg::Apns) => Platform::Apns,
            Some(PlatformArg::Fcm) => Platform::Fcm,
            None => return Err(anyhow!("--token needs --platform apns|fcm")),
        };
        request.targets.extend(args.tokens.iter().map(|t| Target {
            platform: platform as i32,
            token: t.clone(),
        }));
    }
    if request.targets.is_empty() {
        return Err(anyhow!(
            "no targets: give --platform apns|fcm --token TOKEN, or --json FILE with `targets`"
        ));
    }
    if args.title.is_some() || args.body.is_some() {
        let n = request
            .notification
            .get_or_insert_with(Notification::default);
        if let Some(t) = &args.title {
            n.title.clone_from(t);
        }
        if let Some(b) = &args.body {
            n.body.clone_from(b);
        }
    }
    for pair in &args.data {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--data `{pair}`: write KEY=VALUE"))?;
        request.data.insert(k.to_string(), v.to_string());
    }
    if let Some(app) = &args.app {
        request.app.clone_from(app);
    }
    if let Some(r) = &args.recipient {
        request.recipient.clone_from(r);
    }
    if let Some(id) = &args.request_id {
        request.request_id.clone_from(id);
    }
    if let Some(ttl) = args.ttl {
        request.ttl = Some(push_dispatch_proto::pbjson_types::Duration {
            seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(ttl.subsec_nanos()).unwrap_or(0),
        });
    }
    if let Some(p) = args.priority {
        request.priority = match p {
            PriorityArg::High => Priority::High,
            PriorityArg::Normal => Priority::Normal,
        } as i32;
    }
    if let Some(key) = &args.collapse_key {
        request.collapse_key.clone_from(key);
    }
    if request.request_id.is_empty() {
        request.request_id = format!("cli-{:016x}", rand::random::<u64>());
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn send_args(args: &[&str]) -> SendArgs {
        let cli =
            Cli::try_parse_from([&["push-dispatch", "send"], args].concat()).expect("valid flags");
        match cli.command {
            Some(Command::Send(a)) => a,
            other => panic!("not send: {other:?}"),
        }
    }

    #[test]
    fn send_flags_fill_the_delivery_options() {
        let args = send_args(&[
            "--platform",
            "fcm",
            "--token",
            "t1",
            "--ttl",
            "90m",
            "--priority",
            "high",
            "--collapse-key",
            "score",
        ]);
        let r = build_request(&args).expect("request");
        assert_eq!(r.ttl.map(|d| d.seconds), Some(5400));
        assert_eq!(r.priority(), Priority::High);
        assert_eq!(r.collapse_key, "score");
        assert_eq!(r.targets.len(), 1);
    }
}
