//! Environment overrides (`PUSH_DISPATCH_…`, `__` for nesting) as a figment
//! provider fed from given pairs (so that tests need not touch the process
//! environment), indexed overrides of one app
//! (`PUSH_DISPATCH_APPS__0__FCM__RATE_LIMIT`), and figment errors rewritten
//! to name the key or variable at fault.

use std::path::Path;

use figment::Figment;

use crate::{ConfigError, ENV_PREFIX};

/// The app index and the rest of the key of `PUSH_DISPATCH_APPS__<N>__<KEY>`.
pub(crate) fn apps_index(name: &str) -> Option<(usize, String)> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    let mut parts = rest.split("__");
    if !parts.next()?.eq_ignore_ascii_case("apps") {
        return None;
    }
    let index = parts.next()?.parse().ok()?;
    let key = parts
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(".");
    (!key.is_empty()).then_some((index, key))
}

/// The config file's `apps` list with the indexed environment overrides
/// applied, each onto the app at its index.
pub(crate) fn patch_apps(
    base: &Figment,
    indexed: &[(String, String)],
) -> Result<figment::value::Value, ConfigError> {
    let mut apps = match base.find_value("apps") {
        Ok(figment::value::Value::Array(_, apps)) => apps,
        _ => Vec::new(),
    };
    for (name, value) in indexed {
        let Some((index, key)) = apps_index(name) else {
            continue;
        };
        let Some(figment::value::Value::Dict(_, app)) = apps.get_mut(index) else {
            return Err(ConfigError::Parse(format!(
                "{name}: the config file has no apps[{index}] (it lists {} app(s)); environment variables can change an app of the file, not add one",
                apps.len()
            )));
        };
        let parsed: figment::value::Value = match value.parse() {
            Ok(v) => v,
            Err(never) => match never {},
        };
        if let Some(nested) = figment::util::nest(&key, parsed).into_dict() {
            merge_dict(app, nested);
        }
    }
    Ok(figment::value::Value::from(apps))
}

/// `PUSH_DISPATCH_A__B=v` pairs as a figment provider of nested keys (`a.b`),
/// as figment's `Env::prefixed(..).split("__")` would make them, but from the
/// given pairs rather than the process environment.
pub(crate) struct EnvPairs(pub(crate) Vec<(String, String)>);

impl figment::Provider for EnvPairs {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, value) in &self.0 {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // `PUSH_DISPATCH_TEST_…` belongs to the test harness (e.g.
            // PUSH_DISPATCH_TEST_REDIS_URL, set by `make test`), not the config.
            if rest.is_empty()
                || rest.eq_ignore_ascii_case("CONFIG")
                || rest.to_ascii_uppercase().starts_with("TEST_")
            {
                continue;
            }
            let key = rest
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            let parsed: figment::value::Value = match value.parse() {
                Ok(v) => v,
                Err(never) => match never {},
            };
            if let Some(nested) = figment::util::nest(&key, parsed).into_dict() {
                merge_dict(&mut dict, nested);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// Merges `from` into `into`, recursing into dictionaries present in both.
fn merge_dict(into: &mut figment::value::Dict, from: figment::value::Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (
                Some(figment::value::Value::Dict(_, existing)),
                figment::value::Value::Dict(_, new),
            ) => {
                merge_dict(existing, new);
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

pub(crate) fn describe_figment_error(error: &figment::Error, path: &Path) -> String {
    let mut lines = Vec::new();
    for e in error.clone() {
        let key = e.path.join(".");
        let env_name = format!("{ENV_PREFIX}{}", e.path.join("__").to_ascii_uppercase());
        let source = match &e.metadata {
            Some(m) if m.name.starts_with("environment variable") => {
                format!("from the environment ({env_name})")
            }
            Some(m) if m.name.contains("YAML") => format!("in {}", path.display()),
            Some(_) | None => String::from("in the config"),
        };
        if key.is_empty() {
            lines.push(format!("config {source}: {}", e.kind));
        } else {
            lines.push(format!(
                "config key `{key}` {source}: {}; fix it in the config file or with {env_name}",
                e.kind
            ));
        }
    }
    lines.join("\n")
}
