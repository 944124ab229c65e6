//! Value checks of a loaded [`Config`]: ranges, names Pub/Sub accepts, app
//! blocks, and the files the config points at. Each problem becomes one
//! [`ConfigIssue`] that names the key and says how to fix it.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use crate::{AppConfig, Config};

/// One invalid config value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted path of the key, e.g. `pubsub.max_delivery_attempts` or `apps[0].apns.key_file`.
    pub key: String,
    /// What is wrong and what to do about it.
    pub problem: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.problem)
    }
}

pub(crate) struct Issues(pub(crate) Vec<ConfigIssue>);

impl Issues {
    pub(crate) fn add(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        self.0.push(ConfigIssue {
            key: key.into(),
            problem: problem.into(),
        });
    }

    pub(crate) fn range<T: PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        key: &str,
        value: T,
        min: T,
        max: T,
        why: &str,
    ) {
        if value < min || value > max {
            self.add(
                key,
                format!("{value} is out of range; set it between {min} and {max}{why}"),
            );
        }
    }

    pub(crate) fn duration(
        &mut self,
        key: &str,
        value: Duration,
        min: Duration,
        max: Duration,
        why: &str,
    ) {
        if value < min || value > max {
            self.add(
                key,
                format!(
                    "{} is out of range; set it between {} and {}{why}",
                    humantime::format_duration(value),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
        }
    }

    pub(crate) fn resource_name(&mut self, key: &str, name: &str) {
        if let Some(problem) = pubsub_name_problem(name) {
            self.add(
                key,
                format!("`{name}` is not a valid Pub/Sub name: {problem}"),
            );
        }
    }

    /// A provider endpoint: https, or (with `allow_insecure_endpoints`)
    /// http:// for h2c stand-ins and `stub:` for the in-process one.
    fn provider_endpoint(&mut self, key: &str, url: &str, allow_insecure: bool) {
        self.endpoint(key, url);
        if !allow_insecure && (url.starts_with("stub:") || url.starts_with("http://")) {
            self.add(
                key,
                format!("`{url}` is a local stand-in (no push would reach a device); use the provider's https:// endpoint, or set allow_insecure_endpoints: true for local runs and tests"),
            );
        }
    }

    fn endpoint(&mut self, key: &str, url: &str) {
        let ok = url.starts_with("stub:")
            || ((url.starts_with("https://") || url.starts_with("http://"))
                && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty()));
        if !ok {
            self.add(
                key,
                format!("`{url}` is not an endpoint URL; write https://host[:port] (http:// means h2c, for local sandboxes only; stub: is the in-process stand-in)"),
            );
        }
    }
}

/// What Pub/Sub refuses in a topic or subscription id, if anything.
fn pubsub_name_problem(name: &str) -> Option<&'static str> {
    let first = name.chars().next()?;
    if !(3..=255).contains(&name.len()) {
        Some("it must be 3 to 255 characters long")
    } else if !first.is_ascii_alphabetic() {
        Some("it must start with a letter")
    } else if name.to_ascii_lowercase().starts_with("goog") {
        Some("it must not start with `goog`")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
    {
        Some("only letters, digits and - _ . ~ + % are allowed")
    } else {
        None
    }
}

pub(crate) fn validate(config: &Config) -> Vec<ConfigIssue> {
    let mut v = Issues(Vec::new());
    let c = config;

    if c.project_id.is_empty()
        || !c
            .project_id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-.:".contains(ch))
    {
        v.add(
            "project_id",
            format!(
                "`{}` is not a Google Cloud project id; use the id (not the number or display name), e.g. my-project-123",
                c.project_id
            ),
        );
    }

    let p = &c.pubsub;
    for (key, name) in [
        ("pubsub.requests_topic", &p.requests_topic),
        ("pubsub.subscription", &p.subscription),
        ("pubsub.dead_letter_topic", &p.dead_letter_topic),
        (
            "pubsub.dead_letter_subscription",
            &p.dead_letter_subscription,
        ),
        ("feedback.topic", &c.feedback.topic),
    ] {
        if name.is_empty() {
            v.add(key, "is empty; name the Pub/Sub resource");
        } else {
            v.resource_name(key, name);
        }
    }
    if p.dead_letter_topic == p.requests_topic {
        v.add(
            "pubsub.dead_letter_topic",
            "is the same as pubsub.requests_topic; dead letters would be delivered again: use another topic",
        );
    }
    if p.subscription == p.dead_letter_subscription {
        v.add(
            "pubsub.dead_letter_subscription",
            "is the same as pubsub.subscription; give the inspection subscription its own name",
        );
    }
    v.range(
        "pubsub.max_delivery_attempts",
        p.max_delivery_attempts,
        5,
        100,
        " (Pub/Sub's limits for a DeadLetterPolicy)",
    );
    v.duration(
        "pubsub.retry_min_backoff",
        p.retry_min_backoff,
        Duration::ZERO,
        Duration::from_secs(600),
        " (Pub/Sub's RetryPolicy limits)",
    );
    v.duration(
        "pubsub.retry_max_backoff",
        p.retry_max_backoff,
        Duration::ZERO,
        Duration::from_secs(600),
        " (Pub/Sub's RetryPolicy limits)",
    );
    if p.retry_min_backoff > p.retry_max_backoff {
        v.add(
            "pubsub.retry_min_backoff",
            "is larger than pubsub.retry_max_backoff; make the minimum the smaller one",
        );
    }
    v.duration(
        "pubsub.ack_deadline",
        p.ack_deadline,
        Duration::from_secs(10),
        Duration::from_secs(600),
        " (Pub/Sub's limits)",
    );
    v.range("pubsub.streams", p.streams, 1, 64, "");
    v.range(
        "pubsub.max_outstanding_messages",
        p.max_outstanding_messages,
        1,
        1_000_000,
        "",
    );
    if p.max_outstanding_bytes.as_u64() < 64 * 1024 {
        v.add(
            "pubsub.max_outstanding_bytes",
            format!(
                "{} is too small to hold one message; give at least 64KiB (e.g. 64MiB)",
                p.max_outstanding_bytes
            ),
        );
    }
    if let Some(host) = &p.emulator_host
        && (host.contains("://") || !host.contains(':'))
    {
        v.add(
            "pubsub.emulator_host",
            format!("`{host}` must be host:port without a scheme, e.g. 127.0.0.1:8085 (as PUBSUB_EMULATOR_HOST)"),
        );
    }

    v.duration(
        "shutdown_grace",
        c.shutdown_grace,
        Duration::from_secs(1),
        Duration::from_secs(3600),
        "",
    );

    let d = &c.dispatch;
    v.range("dispatch.concurrency", d.concurrency, 1, 100_000, "");
    v.duration(
        "dispatch.request_timeout",
        d.request_timeout,
        Duration::from_millis(100),
        Duration::from_secs(300),
        "",
    );
    v.duration(
        "dispatch.max_in_process_wait",
        d.max_in_process_wait,
        Duration::ZERO,
        Duration::from_secs(300),
        "",
    );
    v.duration(
        "dispatch.quota_wait",
        d.quota_wait,
        Duration::from_secs(1),
        Duration::from_secs(3600),
        " (FCM asks for at least a minute after QUOTA_EXCEEDED)",
    );
    v.range("dispatch.max_republish", d.max_republish, 0, 100, "");
    v.range(
        "dispatch.provider_share",
        d.provider_share,
        0.01,
        1.0,
        " (the share of dispatch.concurrency one app and platform may hold)",
    );
    v.range("dispatch.provider_min", d.provider_min, 1, 100_000, "");
    v.duration(
        "dispatch.max_park",
        d.max_park,
        Duration::ZERO,
        Duration::from_secs(600),
        " (the lease is extended meanwhile; keep it well below the subscription's max lease extension)",
    );
    v.range("dispatch.max_deferrals", d.max_deferrals, 0, 1000, "");
    v.range(
        "dispatch.circuit.failure_ratio",
        d.circuit.failure_ratio,
        0.01,
        1.0,
        "",
    );
    v.range(
        "dispatch.circuit.min_requests",
        d.circuit.min_requests,
        1,
        1_000_000,
        "",
    );
    v.duration(
        "dispatch.circuit.open_for",
        d.circuit.open_for,
        Duration::from_secs(1),
        Duration::from_secs(3600),
        "",
    );

    let g = &c.feedback.guard;
    v.range("feedback.guard.ratio", g.ratio, 0.01, 1.0, "");
    v.range(
        "feedback.guard.min_samples",
        g.min_samples,
        1,
        10_000_000,
        "",
    );
    v.duration(
        "feedback.guard.window",
        g.window,
        Duration::from_secs(1),
        Duration::from_secs(86_400),
        "",
    );

    let t = &c.telemetry;
    if t.log_level.trim().is_empty() {
        v.add(
            "telemetry.log_level",
            "is empty; use info, debug, warn, error or a filter such as push_dispatch=debug,info",
        );
    }
    v.range("telemetry.sample_ratio", t.sample_ratio, 0.0, 1.0, "");
    if let Some(url) = &t.otlp_endpoint {
        v.endpoint("telemetry.otlp_endpoint", url);
    }
    if t.otlp_auth == crate::OtlpAuth::Google && t.otlp_protocol != crate::OtlpProtocol::Http {
        v.add(
            "telemetry.otlp_auth",
            "google needs telemetry.otlp_protocol: http (e.g. https://telemetry.googleapis.com); use none with a collector over gRPC",
        );
    }

    crate::feedback::validate(c, &mut v);
    crate::results::validate(c, &mut v);
    crate::coordination::validate(c, &mut v);
    if let Some(kms) = &p.kms_key_name {
        let parts: Vec<&str> = kms.split('/').collect();
        let shape = [
            "projects",
            "",
            "locations",
            "",
            "keyRings",
            "",
            "cryptoKeys",
            "",
        ];
        let ok = parts.len() == shape.len()
            && parts.iter().zip(shape).all(|(part, want)| {
                if want.is_empty() {
                    !part.is_empty()
                } else {
                    *part == want
                }
            });
        if !ok {
            v.add(
                "pubsub.kms_key_name",
                format!("`{kms}` is not a Cloud KMS key name; write projects/P/locations/L/keyRings/R/cryptoKeys/K, or null"),
            );
        }
    }

    validate_apps(&c.apps, c.allow_insecure_endpoints, &mut v);
    v.0
}

fn validate_apps(apps: &[AppConfig], allow_insecure: bool, v: &mut Issues) {
    if apps.is_empty() {
        v.add(
            "apps",
            "no app is configured; add at least one with an apns or fcm block (see config.yaml)",
        );
    }
    let mut seen = HashSet::new();
    for (i, app) in apps.iter().enumerate() {
        let key = format!("apps[{i}]");
        if app.name.is_empty()
            || !app
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            v.add(
                format!("{key}.name"),
                format!("`{}` must be non-empty letters, digits, - _ .", app.name),
            );
        }
        if !seen.insert(app.name.as_str()) {
            v.add(
                format!("{key}.name"),
                format!(
                    "`{}` is used by an earlier app; app names must be unique",
                    app.name
                ),
            );
        }
        if app.apns.is_none() && app.fcm.is_none() {
            v.add(
                key.clone(),
                format!(
                    "app `{}` has neither an apns nor an fcm block; add one",
                    app.name
                ),
            );
        }
        if let Some(a) = &app.apns {
            v.provider_endpoint(&format!("{key}.apns.endpoint"), &a.endpoint, allow_insecure);
            for (field, value) in [("key_id", &a.key_id), ("team_id", &a.team_id)] {
                if value.len() != 10 || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
                    v.add(
                        format!("{key}.apns.{field}"),
                        format!("`{value}` is not a 10-character Apple identifier; copy it from the Apple developer account"),
                    );
                }
            }
            if a.topic.is_empty() {
                v.add(
                    format!("{key}.apns.topic"),
                    "is empty; set the app's bundle id, e.g. com.example.app",
                );
            }
            v.range(&format!("{key}.apns.connections"), a.connections, 1, 64, "");
            crate::coordination::validate_rate(
                v,
                &format!("{key}.apns.rate_limit"),
                a.rate_limit.as_ref(),
            );
        }
        if let Some(f) = &app.fcm {
            v.provider_endpoint(&format!("{key}.fcm.endpoint"), &f.endpoint, allow_insecure);
            if f.project_id.is_empty() {
                v.add(
                    format!("{key}.fcm.project_id"),
                    "is empty; set the Firebase project id",
                );
            }
            v.range(&format!("{key}.fcm.connections"), f.connections, 1, 64, "");
            crate::coordination::validate_rate(
                v,
                &format!("{key}.fcm.rate_limit"),
                f.rate_limit.as_ref(),
            );
        }
    }
}

pub(crate) fn check_files(config: &Config) -> Vec<ConfigIssue> {
    let mut v = Issues(Vec::new());
    if let Some(ca) = &config.coordination.ca_file {
        check_pem_cert(&mut v, "coordination.ca_file", ca);
    }
    for (i, app) in config.apps.iter().enumerate() {
        if let Some(a) = &app.apns {
            let key = format!("apps[{i}].apns.key_file");
            match read_file(&a.key_file) {
                Err(problem) => v.add(key, problem),
                Ok(text) if !text.contains("-----BEGIN PRIVATE KEY-----") => v.add(
                    key,
                    format!(
                        "{} is not a PKCS#8 PEM key; use the AuthKey_XXXXXXXXXX.p8 file downloaded from Apple",
                        a.key_file.display()
                    ),
                ),
                Ok(_) => {}
            }
            if let Some(named) = key_id_in_file_name(&a.key_file)
                && named != a.key_id
            {
                v.add(
                    format!("apps[{i}].apns.key_id"),
                    format!(
                        "is `{}`, but the key file {} is Apple's download for key `{named}`; set key_id: {named}, or point key_file at AuthKey_{}.p8 (APNs answers InvalidProviderToken otherwise)",
                        a.key_id,
                        a.key_file.display(),
                        a.key_id
                    ),
                );
            }
            if let Some(ca) = &a.ca_file {
                check_pem_cert(&mut v, &format!("apps[{i}].apns.ca_file"), ca);
            }
        }
        if let Some(f) = &app.fcm {
            if let Some(path) = &f.credentials_file {
                let key = format!("apps[{i}].fcm.credentials_file");
                match read_file(path) {
                    Err(problem) => v.add(key, problem),
                    Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                        Ok(json)
                            if json.get("type").and_then(|t| t.as_str())
                                == Some("service_account") =>
                        {
                            let token_uri = json.get("token_uri").and_then(|t| t.as_str());
                            if let Some(uri) = token_uri
                                && !uri.starts_with("https://")
                                && !config.allow_insecure_endpoints
                            {
                                v.add(
                                    key,
                                    format!("{}: token_uri `{uri}` is not https (a local OAuth stand-in); use Google's key file, or set allow_insecure_endpoints: true for local runs and tests", path.display()),
                                );
                            }
                        }
                        _ => v.add(
                            key,
                            format!(
                                "{} is not a service-account JSON key; download one from the Firebase console, or set null for Application Default Credentials",
                                path.display()
                            ),
                        ),
                    },
                }
            }
            if let Some(ca) = &f.ca_file {
                check_pem_cert(&mut v, &format!("apps[{i}].fcm.ca_file"), ca);
            }
        }
    }
    v.0
}

/// The key id in the name Apple gives a downloaded key, `AuthKey_<KEY ID>.p8`.
fn key_id_in_file_name(path: &Path) -> Option<&str> {
    let id = path
        .file_name()?
        .to_str()?
        .strip_prefix("AuthKey_")?
        .strip_suffix(".p8")?;
    (id.len() == 10 && id.chars().all(|c| c.is_ascii_alphanumeric())).then_some(id)
}

fn check_pem_cert(v: &mut Issues, key: &str, path: &Path) {
    match read_file(path) {
        Err(problem) => v.add(key, problem),
        Ok(text) if !text.contains("-----BEGIN CERTIFICATE-----") => {
            v.add(key, format!("{} holds no PEM certificate", path.display()))
        }
        Ok(_) => {}
    }
}

fn read_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "no such file {}; mount it there or change the path",
            path.display()
        ),
        _ => format!("cannot read {}: {e}", path.display()),
    })
}
