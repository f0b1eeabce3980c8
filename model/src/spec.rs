//! The app manifest (`fluxapp.toml`): parsing, validation with field paths, geolocation rules.
//!
//! Parsing walks the TOML table by hand instead of deriving `Deserialize`, so that one pass
//! reports every problem with its path (`component[0].ram: ...`) instead of stopping at the first.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::tier::Resources;

/// Blocks an app lives for when the manifest gives no `expire` (about a month at 30 s blocks).
pub const DEFAULT_EXPIRE_BLOCKS: u32 = 88_000;
/// The longest lease a registration may buy.
pub const MAX_EXPIRE_BLOCKS: u32 = 1_056_000;
/// Instances an app may ask for.
pub const MAX_INSTANCES: u32 = 100;
/// Per-component limits (Flux's v8 limits).
pub const MAX_CPU_TENTHS: u32 = 150;
/// Most memory a component may ask for, in MB.
pub const MAX_RAM_MB: u32 = 59_000;
/// Least memory a component may ask for, in MB.
pub const MIN_RAM_MB: u32 = 16;
/// Most disk a component may ask for, in GB.
pub const MAX_HDD_GB: u32 = 840;
/// Most components in one app.
pub const MAX_COMPONENTS: usize = 10;
/// Flux continent codes.
pub const CONTINENTS: [&str; 7] = ["EU", "NA", "AS", "SA", "AF", "OC", "AN"];
/// The prefix of a content-addressed module reference, as stored on chain.
pub const BLAKE3_PREFIX: &str = "blake3:";

/// An app: a named, owner-signed set of components with an instance count and placement rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSpec {
    /// `^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`, at most 63 characters.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// How many instances run, over all regions.
    pub instances: u32,
    /// Where instances may and may not run; empty means anywhere.
    #[serde(default)]
    pub geolocation: Vec<GeoRule>,
    /// Lease length in blocks.
    pub expire: u32,
    /// The workloads of each instance.
    pub components: Vec<ComponentSpec>,
}

/// One workload of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// Unique within the app; same syntax as an app name.
    pub name: String,
    /// In a manifest, a path relative to it; on chain, `blake3:<hex>` of the module's bytes.
    pub wasm: String,
    /// Tenths of a core.
    pub cpu_tenths: u32,
    /// Memory in MB; it is also the guest's linear-memory limit.
    pub ram_mb: u32,
    /// Disk in GB.
    pub hdd_gb: u32,
    /// Environment variables given to the guest.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl ComponentSpec {
    /// The resources one instance of this component reserves.
    pub fn resources(&self) -> Resources {
        Resources { cpu_tenths: self.cpu_tenths, ram_mb: self.ram_mb, hdd_gb: self.hdd_gb }
    }

    /// The module's content hash, if `wasm` is a `blake3:` reference.
    pub fn wasm_hash(&self) -> Option<&str> {
        self.wasm.strip_prefix(BLAKE3_PREFIX)
    }
}

impl AppSpec {
    /// The resources one instance of the app reserves on a node (all components together).
    pub fn instance_resources(&self) -> Resources {
        self.components.iter().fold(Resources::default(), |acc, c| acc.add(&c.resources()))
    }

    /// Parses and validates a TOML manifest, reporting every problem found.
    pub fn from_toml(text: &str) -> Result<AppSpec, ValidationErrors> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ValidationErrors::one("manifest", format!("not valid TOML: {}", e.message()))
        })?;
        let mut errors = ValidationErrors::default();
        // Fields of the wrong type are reported here and replaced by valid placeholders, so that
        // `check` still reports the range errors of every other field.
        let spec = parse_table(&table, &mut errors);
        spec.check(&mut errors);
        errors.into_result().map(|()| spec)
    }

    /// Checks every rule of the manifest format.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        self.check(&mut errors);
        errors.into_result()
    }

    /// Checks the manifest rules and that every module is a content-addressed reference, as the
    /// chain stores them.
    pub fn validate_for_chain(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        self.check(&mut errors);
        for (i, c) in self.components.iter().enumerate() {
            let ok = c.wasm_hash().is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                errors.push(format!("component[{i}].wasm"), "must be `blake3:<64 hex digits>` once uploaded");
            }
        }
        errors.into_result()
    }

    fn check(&self, errors: &mut ValidationErrors) {
        if let Err(m) = check_name(&self.name) {
            errors.push("name", m);
        }
        // Characters, not bytes: 130 `é` are 130 characters.
        if self.description.chars().count() > 256 {
            errors.push("description", "must be at most 256 characters");
        }
        if !(1..=MAX_INSTANCES).contains(&self.instances) {
            errors.push("instances", format!("must be between 1 and {MAX_INSTANCES}"));
        }
        if !(1..=MAX_EXPIRE_BLOCKS).contains(&self.expire) {
            errors.push("expire", format!("must be between 1 and {MAX_EXPIRE_BLOCKS} blocks"));
        }
        if self.components.is_empty() {
            errors.push("component", "at least one [[component]] is required");
        }
        if self.components.len() > MAX_COMPONENTS {
            errors.push("component", format!("at most {MAX_COMPONENTS} components"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, c) in self.components.iter().enumerate() {
            let at = |field: &str| format!("component[{i}].{field}");
            if let Err(m) = check_name(&c.name) {
                errors.push(at("name"), m);
            } else if !seen.insert(c.name.as_str()) {
                errors.push(at("name"), format!("`{}` is used by another component", c.name));
            }
            if c.wasm.trim().is_empty() {
                errors.push(at("wasm"), "must name the component's .wasm file");
            }
            if !(1..=MAX_CPU_TENTHS).contains(&c.cpu_tenths) {
                errors.push(at("cpu"), "must be a step of 0.1 between 0.1 and 15");
            }
            if !(MIN_RAM_MB..=MAX_RAM_MB).contains(&c.ram_mb) {
                errors.push(
                    at("ram"),
                    format!("must be a multiple of 1 MB and at least {MIN_RAM_MB} (at most {MAX_RAM_MB})"),
                );
            }
            if !(1..=MAX_HDD_GB).contains(&c.hdd_gb) {
                errors.push(at("hdd"), format!("must be a whole number of GB between 1 and {MAX_HDD_GB}"));
            }
            for key in c.env.keys() {
                if !is_env_name(key) {
                    errors.push(at(&format!("env.{key}")), "names must match [A-Za-z_][A-Za-z0-9_]*");
                }
            }
        }
    }
}

/// Checks an app or component name: a DNS label of lowercase letters, digits and dashes.
pub fn check_name(name: &str) -> Result<(), String> {
    let chars_ok = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 63 || !chars_ok || name.starts_with('-') || name.ends_with('-') {
        return Err("must match ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ and be at most 63 characters".into());
    }
    Ok(())
}

// === geolocation ===

/// One Flux geolocation rule: `acEU`, `acEU_DE` (allow) or `a!cAS`, `a!cEU_DE` (forbid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoRule {
    /// Forbid rules exclude; allow rules, when any exist, are the only places allowed.
    pub allow: bool,
    /// A continent code from [`CONTINENTS`].
    pub continent: String,
    /// An ISO 3166 alpha-2 country code within the continent.
    pub country: Option<String>,
}

impl GeoRule {
    /// Parses the Flux syntax.
    pub fn parse(text: &str) -> Result<GeoRule, String> {
        let (allow, rest) = if let Some(rest) = text.strip_prefix("a!c") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("ac") {
            (true, rest)
        } else {
            return Err(format!("`{text}` must start with `ac` (allow) or `a!c` (forbid), e.g. acEU or a!cAS"));
        };
        let (continent, country) = match rest.split_once('_') {
            Some((c, k)) => (c, Some(k)),
            None => (rest, None),
        };
        if !CONTINENTS.contains(&continent) {
            return Err(format!("`{text}`: unknown continent `{continent}` (one of {})", CONTINENTS.join(", ")));
        }
        if let Some(k) = country
            && (k.len() != 2 || !k.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(format!("`{text}`: country `{k}` must be two capital letters, e.g. DE"));
        }
        Ok(GeoRule { allow, continent: continent.into(), country: country.map(Into::into) })
    }

    fn matches(&self, continent: &str, country: &str) -> bool {
        self.continent == continent && self.country.as_deref().is_none_or(|k| k == country)
    }
}

impl fmt::Display for GeoRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allow { "ac" } else { "a!c" })?;
        f.write_str(&self.continent)?;
        if let Some(k) = &self.country {
            write!(f, "_{k}")?;
        }
        Ok(())
    }
}

impl Serialize for GeoRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GeoRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        GeoRule::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether a node in `continent`/`country` is allowed by `rules`.
pub fn geo_allows(rules: &[GeoRule], continent: &str, country: &str) -> bool {
    let forbidden = rules.iter().any(|r| !r.allow && r.matches(continent, country));
    let has_allow = rules.iter().any(|r| r.allow);
    let allowed = !has_allow || rules.iter().any(|r| r.allow && r.matches(continent, country));
    allowed && !forbidden
}

// === errors ===

/// One problem in a manifest, with the path of the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Field path, e.g. `component[0].ram`.
    pub path: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Every problem found in a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub(crate) fn one(path: &str, message: impl Into<String>) -> Self {
        Self(vec![FieldError { path: path.into(), message: message.into() }])
    }

    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), message: message.into() });
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_result(self) -> Result<(), ValidationErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ValidationErrors {}

// === TOML walking ===

fn parse_table(table: &toml::Table, errors: &mut ValidationErrors) -> AppSpec {
    // `secrets` never reaches the spec (see [`manifest_secrets`]).
    const KNOWN: [&str; 7] = ["name", "description", "instances", "geolocation", "expire", "component", "secrets"];
    for key in table.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        errors.push(key.as_str(), format!("unknown field (expected one of {})", KNOWN.join(", ")));
    }
    let name = req_str(table, "name", "", errors);
    let description = opt_str(table, "description", "", errors).unwrap_or_default();
    let instances = opt_u32(table, "instances", "", errors).unwrap_or(1);
    let expire = opt_u32(table, "expire", "", errors).unwrap_or(DEFAULT_EXPIRE_BLOCKS);
    let mut geolocation = Vec::new();
    match table.get("geolocation") {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str().map(GeoRule::parse) {
                    Some(Ok(rule)) => geolocation.push(rule),
                    Some(Err(m)) => errors.push(format!("geolocation[{i}]"), m),
                    None => errors.push(format!("geolocation[{i}]"), "must be a string such as \"acEU\""),
                }
            }
        }
        Some(_) => errors.push("geolocation", "must be an array of strings such as [\"acEU\", \"a!cAS\"]"),
    }
    let mut components = Vec::new();
    match table.get("component") {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("component[{i}].");
                match item.as_table() {
                    Some(t) => components.push(parse_component(t, &at, errors)),
                    None => errors.push(format!("component[{i}]"), "must be a table ([[component]])"),
                }
            }
        }
        Some(_) => errors.push("component", "must be an array of tables ([[component]])"),
    }
    AppSpec { name, description, instances, geolocation, expire, components }
}

fn parse_component(t: &toml::Table, at: &str, errors: &mut ValidationErrors) -> ComponentSpec {
    const KNOWN: [&str; 6] = ["name", "wasm", "cpu", "ram", "hdd", "env"];
    for key in t.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        errors.push(format!("{at}{key}"), format!("unknown field (expected one of {})", KNOWN.join(", ")));
    }
    let name = req_str(t, "name", at, errors);
    let wasm = req_str(t, "wasm", at, errors);
    let cpu_tenths = match t.get("cpu") {
        None => 1,
        Some(v) => {
            let cores = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
            match cores {
                Some(c) if c > 0.0 && ((c * 10.0).round() - c * 10.0).abs() < 1e-6 && c * 10.0 <= u32::MAX as f64 => {
                    (c * 10.0).round() as u32
                }
                _ => {
                    errors.push(format!("{at}cpu"), "must be a step of 0.1 between 0.1 and 15");
                    1
                }
            }
        }
    };
    let ram_mb = match t.get("ram") {
        None => 64,
        Some(v) => match v.as_integer().and_then(|i| u32::try_from(i).ok()) {
            Some(mb) => mb,
            None => {
                errors.push(format!("{at}ram"), format!("must be a multiple of 1 MB and at least {MIN_RAM_MB}"));
                MIN_RAM_MB
            }
        },
    };
    let hdd_gb = match t.get("hdd") {
        None => 1,
        Some(v) => match v.as_integer().and_then(|i| u32::try_from(i).ok()) {
            Some(gb) => gb,
            None => {
                errors.push(format!("{at}hdd"), format!("must be a whole number of GB between 1 and {MAX_HDD_GB}"));
                1
            }
        },
    };
    let mut env = BTreeMap::new();
    match t.get("env") {
        None => {}
        Some(toml::Value::Table(vars)) => {
            for (k, v) in vars {
                match v.as_str() {
                    Some(s) => {
                        env.insert(k.clone(), s.to_string());
                    }
                    None => errors.push(format!("{at}env.{k}"), "must be a string"),
                }
            }
        }
        Some(_) => errors.push(format!("{at}env"), "must be a table of strings, e.g. { GREETING = \"hi\" }"),
    }
    ComponentSpec { name, wasm, cpu_tenths, ram_mb, hdd_gb, env }
}

/// A required string; on error, a placeholder that passes `check` (the error is already recorded).
fn req_str(t: &toml::Table, key: &str, at: &str, errors: &mut ValidationErrors) -> String {
    match t.get(key) {
        Some(toml::Value::String(s)) => return s.clone(),
        Some(_) => errors.push(format!("{at}{key}"), "must be a string"),
        None => errors.push(format!("{at}{key}"), "is required"),
    }
    "placeholder".into()
}

fn opt_str(t: &toml::Table, key: &str, at: &str, errors: &mut ValidationErrors) -> Option<String> {
    match t.get(key) {
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(format!("{at}{key}"), "must be a string");
            None
        }
        None => None,
    }
}

/// `None` when absent or of the wrong type (then the error is recorded).
fn opt_u32(t: &toml::Table, key: &str, at: &str, errors: &mut ValidationErrors) -> Option<u32> {
    let n = t.get(key)?.as_integer().and_then(|i| u32::try_from(i).ok());
    if n.is_none() {
        errors.push(format!("{at}{key}"), "must be a whole number");
    }
    n
}

#[cfg(test)]
mod tests;

/// A manifest's `[secrets]` table: name to value as written (`@PATH` names a file to read the
/// value from). It is kept out of [`AppSpec`], which is published on chain; `fluxctl` seals the
/// values instead (see "Secrets" in `docs/architecture.md`).
pub fn manifest_secrets(text: &str) -> Result<BTreeMap<String, String>, ValidationErrors> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ValidationErrors::one("manifest", format!("not valid TOML: {}", e.message())))?;
    let mut errors = ValidationErrors::default();
    let mut secrets = BTreeMap::new();
    match table.get("secrets") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (name, value) in t {
                if !is_env_name(name) {
                    errors.push(format!("secrets.{name}"), "names must match [A-Za-z_][A-Za-z0-9_]*");
                }
                match value.as_str() {
                    Some(v) => {
                        secrets.insert(name.clone(), v.to_string());
                    }
                    None => errors.push(format!("secrets.{name}"), "must be a string (or \"@FILE\" to read one)"),
                }
            }
        }
        Some(_) => errors.push("secrets", "must be a table of NAME = \"value\""),
    }
    errors.into_result().map(|()| secrets)
}

/// Whether `name` may name an environment variable (`env` keys, secret names):
/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    name.chars().next().is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
        && name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}
