//! Validation of decoded push requests.
//!
//! Two kinds of problems exist, and SPEC §5.2 treats them differently:
//!
//! * [`RequestError`]: the whole request is unusable (no targets, too many,
//!   unknown app, an oversized field). The message is poison and goes to the
//!   dead-letter topic at once.
//! * [`TargetError`]: one target alone is unusable (unspecified platform,
//!   malformed token, platform not configured for the app). Only that target is
//!   dead-lettered; its siblings are still sent.
//!
//! The limits are constants so that docs, tests and producers can refer to them.

use crate::attributes::PushError;
use crate::v1::{Platform, PushRequest};

/// At most this many targets per request. Each target is one provider request
/// (FCM v1 has no batch send), so a bigger fan-out belongs to the producer.
pub const MAX_TARGETS: usize = 500;
/// Longest `request_id`, `recipient` or `app`, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest `collapse_key`, in bytes (APNs caps `apns-collapse-id` at 64 bytes).
pub const MAX_COLLAPSE_KEY_BYTES: usize = 64;
/// Longest free-text field (title, body, thread id, category, …), in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Largest `data` map, keys and values together, in bytes (both providers cap
/// the whole payload at 4 KiB).
pub const MAX_DATA_BYTES: usize = 4096;
/// Longest `ttl`, in seconds: protobuf's own bound for a `Duration` (10,000
/// years). A longer one is malformed, and cannot be added to any clock.
pub const MAX_TTL_SECONDS: i64 = 315_576_000_000;
/// Shortest APNs device token, in hex digits (32 bytes today).
pub const APNS_TOKEN_MIN_HEX: usize = 64;
/// Longest APNs device token accepted, in hex digits (Apple reserves up to 100 bytes).
pub const APNS_TOKEN_MAX_HEX: usize = 200;
/// Longest FCM registration token accepted (real ones are about 160–260 characters).
pub const FCM_TOKEN_MAX_CHARS: usize = 4096;

/// What validation needs to know of a configured app: its name and the
/// platforms it serves. The worker's apps implement it, so validation reads
/// them directly; [`AppPlatforms`] is the plain version (e.g. for `send`).
pub trait ConfiguredApp {
    /// The app's configured name.
    fn name(&self) -> &str;
    /// Whether the app has a block for `platform`.
    fn serves(&self, platform: Platform) -> bool;
}

/// The platforms an app has configured; the first app of the list is the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPlatforms {
    /// The app's configured name.
    pub name: String,
    /// Whether the app has an `apns` block.
    pub apns: bool,
    /// Whether the app has an `fcm` block.
    pub fcm: bool,
}

impl ConfiguredApp for AppPlatforms {
    fn name(&self) -> &str {
        &self.name
    }

    fn serves(&self, platform: Platform) -> bool {
        match platform {
            Platform::Apns => self.apns,
            Platform::Fcm => self.fcm,
            Platform::Unspecified => false,
        }
    }
}

/// Why a whole request is rejected (it is then dead-lettered as poison).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request names no target.
    #[error("request has no targets; add at least one {{platform, token}} to `targets`")]
    NoTargets,
    /// The request names more targets than [`MAX_TARGETS`].
    #[error("request has {count} targets, over the limit of {max}; split it into several requests")]
    TooManyTargets {
        /// How many targets the request had.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The request names an app that is not configured.
    #[error(
        "unknown app `{app}`; configured apps are: {known}. Use one of them or leave `app` empty for the default"
    )]
    UnknownApp {
        /// The app the request named.
        app: String,
        /// The configured app names, comma separated.
        known: String,
    },
    /// No app is configured at all.
    #[error("no app is configured; add one under `apps` in the config")]
    NoApps,
    /// A field is longer than its limit.
    #[error("field `{field}` is {len} bytes, over the limit of {max}")]
    FieldTooLong {
        /// The field's name in the proto.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `ttl` is negative or not a valid duration.
    #[error(
        "field `ttl` is negative, malformed or over protobuf's 315576000000s; give a duration of 0s or more (FCM keeps at most 28 days), or leave it unset"
    )]
    InvalidTtl,
}

impl RequestError {
    /// Short machine-readable code for the `push_error` attribute.
    pub fn code(&self) -> PushError {
        match self {
            RequestError::NoTargets => PushError::NoTargets,
            RequestError::TooManyTargets { .. } => PushError::TooManyTargets,
            RequestError::UnknownApp { .. } | RequestError::NoApps => PushError::UnknownApp,
            RequestError::FieldTooLong { .. } => PushError::FieldTooLong,
            RequestError::InvalidTtl => PushError::InvalidTtl,
        }
    }
}

/// What is wrong with a token's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenProblem {
    /// The token is empty.
    Empty,
    /// An APNs token holds a character that is not a hex digit.
    NotHex,
    /// An APNs token has an odd number of hex digits.
    OddLength,
    /// The token is shorter or longer than the platform allows.
    BadLength,
    /// An FCM token holds a character outside `A–Z a–z 0–9 - _ : .`.
    BadCharacter,
}

impl std::fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenProblem::Empty => "it is empty",
            TokenProblem::NotHex => "APNs tokens are hex digits only",
            TokenProblem::OddLength => "APNs tokens have an even number of hex digits",
            TokenProblem::BadLength => "its length is outside what the platform issues",
            TokenProblem::BadCharacter => "FCM tokens hold only letters, digits and - _ : .",
        })
    }
}

/// Why one target alone cannot be sent (it is dead-lettered; siblings go on).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The target's platform is `PLATFORM_UNSPECIFIED` or unknown.
    #[error("target {index} has no platform; set `platform` to PLATFORM_APNS or PLATFORM_FCM")]
    UnspecifiedPlatform {
        /// Position of the target in the request.
        index: usize,
    },
    /// The token does not have the shape the platform issues.
    #[error("target {index}: malformed {platform} token ({length} chars): {problem}")]
    MalformedToken {
        /// Position of the target in the request.
        index: usize,
        /// `apns` or `fcm`.
        platform: &'static str,
        /// The token's length (the token itself is never printed).
        length: usize,
        /// What is wrong.
        problem: TokenProblem,
    },
    /// The app has no configuration for this target's platform.
    #[error(
        "target {index}: app `{app}` has no `{platform}` block configured; add it under apps[].{platform} or stop sending {platform} targets for this app"
    )]
    PlatformNotConfigured {
        /// Position of the target in the request.
        index: usize,
        /// `apns` or `fcm`.
        platform: &'static str,
        /// The app's name.
        app: String,
    },
}

impl TargetError {
    /// Short machine-readable code for the `push_error` attribute.
    pub fn code(&self) -> PushError {
        match self {
            TargetError::UnspecifiedPlatform { .. } => PushError::UnspecifiedPlatform,
            TargetError::MalformedToken { .. } => PushError::MalformedToken,
            TargetError::PlatformNotConfigured { .. } => PushError::PlatformNotConfigured,
        }
    }

    /// Position of the target in its request.
    pub fn index(&self) -> usize {
        match self {
            TargetError::UnspecifiedPlatform { index }
            | TargetError::MalformedToken { index, .. }
            | TargetError::PlatformNotConfigured { index, .. } => *index,
        }
    }
}

/// A request that passed the request-level checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Index of the app in the list given to [`check`].
    pub app_index: usize,
    /// Indices of the targets that can be sent.
    pub sendable: Vec<usize>,
    /// Targets that alone are invalid.
    pub rejected: Vec<TargetError>,
    /// Targets that repeat an earlier target's platform and token: not sent
    /// again (the device would get the push twice); they share the fate of
    /// the first.
    pub duplicates: Vec<usize>,
}

/// Checks a decoded request: request-level rules first, then each target.
pub fn check<A: ConfiguredApp>(req: &PushRequest, apps: &[A]) -> Result<Checked, RequestError> {
    if req.targets.is_empty() {
        return Err(RequestError::NoTargets);
    }
    if req.targets.len() > MAX_TARGETS {
        return Err(RequestError::TooManyTargets {
            count: req.targets.len(),
            max: MAX_TARGETS,
        });
    }
    check_lengths(req)?;
    let app_index = resolve_app(&req.app, apps)?;
    let app = &apps[app_index];

    let mut sendable = Vec::with_capacity(req.targets.len());
    let mut rejected = Vec::new();
    let mut duplicates = Vec::new();
    let mut seen = std::collections::HashSet::with_capacity(req.targets.len());
    for (index, target) in req.targets.iter().enumerate() {
        if !seen.insert((target.platform, target.token.as_str())) {
            duplicates.push(index);
            continue;
        }
        match check_target(index, target.platform, &target.token, app) {
            Ok(()) => sendable.push(index),
            Err(e) => rejected.push(e),
        }
    }
    Ok(Checked {
        app_index,
        sendable,
        rejected,
        duplicates,
    })
}

fn resolve_app<A: ConfiguredApp>(name: &str, apps: &[A]) -> Result<usize, RequestError> {
    if apps.is_empty() {
        return Err(RequestError::NoApps);
    }
    if name.is_empty() {
        return Ok(0);
    }
    apps.iter()
        .position(|a| a.name() == name)
        .ok_or_else(|| RequestError::UnknownApp {
            app: name.chars().take(MAX_ID_BYTES).collect(),
            known: apps.iter().map(|a| a.name()).collect::<Vec<_>>().join(", "),
        })
}

fn check_lengths(req: &PushRequest) -> Result<(), RequestError> {
    let limit = |field: &'static str, value: &str, max: usize| {
        if value.len() > max {
            Err(RequestError::FieldTooLong {
                field,
                len: value.len(),
                max,
            })
        } else {
            Ok(())
        }
    };
    limit("request_id", &req.request_id, MAX_ID_BYTES)?;
    limit("recipient", &req.recipient, MAX_ID_BYTES)?;
    limit("app", &req.app, MAX_ID_BYTES)?;
    limit("collapse_key", &req.collapse_key, MAX_COLLAPSE_KEY_BYTES)?;
    limit("thread_id", &req.thread_id, MAX_TEXT_BYTES)?;
    limit("category", &req.category, MAX_TEXT_BYTES)?;
    if let Some(n) = &req.notification {
        for (field, value) in [
            ("notification.title", &n.title),
            ("notification.subtitle", &n.subtitle),
            ("notification.body", &n.body),
            ("notification.image", &n.image),
            ("notification.sound", &n.sound),
            ("notification.title_loc_key", &n.title_loc_key),
            ("notification.body_loc_key", &n.body_loc_key),
            ("notification.click_action", &n.click_action),
        ] {
            limit(field, value, MAX_TEXT_BYTES)?;
        }
        let args: usize = n
            .title_loc_args
            .iter()
            .chain(&n.body_loc_args)
            .map(String::len)
            .sum();
        if args > MAX_TEXT_BYTES {
            return Err(RequestError::FieldTooLong {
                field: "notification.*_loc_args",
                len: args,
                max: MAX_TEXT_BYTES,
            });
        }
    }
    let data: usize = req.data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if data > MAX_DATA_BYTES {
        return Err(RequestError::FieldTooLong {
            field: "data",
            len: data,
            max: MAX_DATA_BYTES,
        });
    }
    if let Some(ttl) = &req.ttl
        && (ttl.seconds < 0
            || ttl.seconds > MAX_TTL_SECONDS
            || ttl.nanos < 0
            || ttl.nanos >= 1_000_000_000)
    {
        return Err(RequestError::InvalidTtl);
    }
    Ok(())
}

fn check_target(
    index: usize,
    platform: i32,
    token: &str,
    app: &impl ConfiguredApp,
) -> Result<(), TargetError> {
    let platform = Platform::try_from(platform).unwrap_or(Platform::Unspecified);
    let (configured, shape) = match platform {
        Platform::Unspecified => return Err(TargetError::UnspecifiedPlatform { index }),
        Platform::Apns => (app.serves(platform), apns_token_problem(token)),
        Platform::Fcm => (app.serves(platform), fcm_token_problem(token)),
    };
    if let Some(problem) = shape {
        return Err(TargetError::MalformedToken {
            index,
            platform: platform.label(),
            length: token.chars().count(),
            problem,
        });
    }
    if !configured {
        return Err(TargetError::PlatformNotConfigured {
            index,
            platform: platform.label(),
            app: app.name().to_string(),
        });
    }
    Ok(())
}

/// What is wrong with an APNs device token, if anything.
pub fn apns_token_problem(token: &str) -> Option<TokenProblem> {
    if token.is_empty() {
        Some(TokenProblem::Empty)
    } else if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(TokenProblem::NotHex)
    } else if !token.len().is_multiple_of(2) {
        Some(TokenProblem::OddLength)
    } else if !(APNS_TOKEN_MIN_HEX..=APNS_TOKEN_MAX_HEX).contains(&token.len()) {
        Some(TokenProblem::BadLength)
    } else {
        None
    }
}

/// What is wrong with an FCM registration token, if anything.
pub fn fcm_token_problem(token: &str) -> Option<TokenProblem> {
    if token.is_empty() {
        Some(TokenProblem::Empty)
    } else if token.len() > FCM_TOKEN_MAX_CHARS {
        Some(TokenProblem::BadLength)
    } else if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
    {
        Some(TokenProblem::BadCharacter)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
