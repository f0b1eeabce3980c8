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
/// Requests one instance serves at once unless its component says otherwise.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 100;
/// Most `max_concurrency` may be.
pub const MAX_CONCURRENCY: u32 = 10_000;
/// Largest request body, MB, unless a component says otherwise.
pub const DEFAULT_MAX_BODY_MB: u32 = 16;
/// Most `max_body_mb` may be.
pub const MAX_BODY_MB: u32 = 1024;
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
    /// Which network its containers share. Skipped when empty, so a spec that sets none
    /// serializes as it did before networks existed: signatures and block hashes cover this JSON.
    #[serde(default, skip_serializing_if = "NetworkSpec::is_empty")]
    pub network: NetworkSpec,
}

/// Most apps one app may share networks with.
pub const MAX_NETWORK_WITH: usize = 10;

/// An app's network: its containers are on a network of their own, which no other app's
/// containers reach, unless it names apps of the same owner to share with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Apps whose networks this app's containers join too (`[network] with = ["db"]` in a
    /// manifest, `networkWith:[db]` in a Flux description). Honoured only for apps of the same
    /// owner; the control plane drops any other name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub with: Vec<String>,
}

impl NetworkSpec {
    /// Whether it asks for nothing beyond the app's own network.
    pub fn is_empty(&self) -> bool {
        self.with.is_empty()
    }
}

/// One workload of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// Unique within the app; same syntax as an app name.
    pub name: String,
    /// What runs. Flattened, so a WASM component serializes as `"wasm": "..."` exactly as it did
    /// before containers existed: signatures and block hashes cover this JSON.
    #[serde(flatten)]
    pub workload: Workload,
    /// Tenths of a core.
    pub cpu_tenths: u32,
    /// Memory in MB; the guest's linear-memory limit, or the container's memory limit.
    pub ram_mb: u32,
    /// Disk in GB.
    pub hdd_gb: u32,
    /// Environment variables given to the workload.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// What the gateway lets through to one instance. Flattened and empty by default, so a
    /// spec that sets none serializes as it did before these limits existed.
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// The gateway's limits for one component's instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Requests one instance serves at once ([`DEFAULT_MAX_CONCURRENCY`] when unset). A full
    /// instance gets no more until one finishes; the gateway picks another, further away if
    /// it must.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Largest request body in MB ([`DEFAULT_MAX_BODY_MB`] when unset); larger gets 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_mb: Option<u32>,
}

impl Traffic {
    /// Requests one instance serves at once.
    pub fn concurrency(&self) -> u32 {
        self.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY)
    }

    /// Largest request body, bytes.
    pub fn body_bytes(&self) -> u64 {
        u64::from(self.max_body_mb.unwrap_or(DEFAULT_MAX_BODY_MB)) << 20
    }
}

/// What a component runs; it decides which node capability the component needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Workload {
    /// A wasi:http component. In a manifest, a path relative to it; on chain, `blake3:<hex>` of
    /// the module's bytes.
    #[serde(rename = "wasm")]
    Wasm(String),
    /// An OCI image, run as a container.
    #[serde(rename = "oci")]
    Oci(OciWorkload),
}

/// A container component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciWorkload {
    /// The image, `name:tag` (or `name@sha256:...`).
    pub image: String,
    /// An image archive (`docker save` or OCI layout tar) to load the image from: in a
    /// manifest a path relative to it, on chain `blake3:<hex>` of the uploaded archive. Without
    /// one, a node uses the image it has, or pulls it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// The ports the container serves; the first is the component's main port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<OciPort>,
    /// Arguments that replace the image's command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// Paths in the container backed by a local volume that outlives restarts of the instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// A path answered with a status below 500 when healthy; without one, a TCP connect to the
    /// main port is the health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
}

/// One port a container serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciPort {
    /// The port inside the container.
    pub container: u16,
    /// The app-wide port it is published as: it names the route `<app>_<port>.app.<domain>`.
    /// Host ports are chosen by each node, never by the app.
    pub public: u16,
    /// A custom domain routed to this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Workload {
    /// The node capability that runs it.
    pub fn capability(&self) -> crate::chain::Capability {
        match self {
            Workload::Wasm(_) => crate::chain::Capability::Wasm,
            Workload::Oci(_) => crate::chain::Capability::Oci,
        }
    }
}

impl ComponentSpec {
    /// The resources one instance of this component reserves.
    pub fn resources(&self) -> Resources {
        Resources { cpu_tenths: self.cpu_tenths, ram_mb: self.ram_mb, hdd_gb: self.hdd_gb }
    }

    /// The node capability this component needs.
    pub fn capability(&self) -> crate::chain::Capability {
        self.workload.capability()
    }

    /// The module's content hash, if this is a WASM component with a `blake3:` reference.
    pub fn wasm_hash(&self) -> Option<&str> {
        match &self.workload {
            Workload::Wasm(module) => module.strip_prefix(BLAKE3_PREFIX),
            Workload::Oci(_) => None,
        }
    }

    /// The blobs a node fetches to run this component (a module or an image archive), as
    /// written: `blake3:<hex>` on chain, a path in a manifest. Field name first.
    pub fn blobs(&self) -> Vec<(&'static str, &str)> {
        match &self.workload {
            Workload::Wasm(module) => vec![("wasm", module.as_str())],
            Workload::Oci(oci) => oci.archive.iter().map(|a| ("image_archive", a.as_str())).collect(),
        }
    }

    /// The same, writable, so that `fluxctl` can replace paths with uploaded hashes.
    pub fn blobs_mut(&mut self) -> Vec<(&'static str, &mut String)> {
        match &mut self.workload {
            Workload::Wasm(module) => vec![("wasm", module)],
            Workload::Oci(oci) => oci.archive.iter_mut().map(|a| ("image_archive", a)).collect(),
        }
    }
}

impl AppSpec {
    /// The resources one instance of the app reserves on a node (all components together).
    pub fn instance_resources(&self) -> Resources {
        self.components.iter().fold(Resources::default(), |acc, c| acc.add(&c.resources()))
    }

    /// The custom domains its containers' ports claim, in [`crate::domains::canonical`] form.
    pub fn domains(&self) -> std::collections::BTreeSet<String> {
        self.components
            .iter()
            .filter_map(|c| match &c.workload {
                Workload::Oci(oci) => Some(oci.ports.iter().filter_map(|p| p.domain.as_deref())),
                Workload::Wasm(_) => None,
            })
            .flatten()
            .map(crate::domains::canonical)
            .collect()
    }

    /// The capabilities a node needs to run an instance: one per kind of workload.
    pub fn needs(&self) -> crate::chain::Capabilities {
        let caps: Vec<crate::chain::Capability> = self.components.iter().map(ComponentSpec::capability).collect();
        crate::chain::Capabilities::of(&caps)
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

    /// Reads a manifest: a Flux v8 JSON spec when `text` is a JSON object, our TOML otherwise.
    pub fn from_manifest(text: &str) -> Result<AppSpec, ValidationErrors> {
        if text.trim_start().starts_with('{') {
            crate::flux::FluxSpec::parse(text)?.to_app_spec()
        } else {
            AppSpec::from_toml(text)
        }
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
            for (field, blob) in c.blobs() {
                if !is_blob_ref(blob) {
                    errors.push(format!("component[{i}].{field}"), "must be `blake3:<64 hex digits>` once uploaded");
                }
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
        // Public ports are app-wide: each names one route.
        let mut ports = std::collections::BTreeSet::new();
        for (i, c) in self.components.iter().enumerate() {
            let at = |field: &str| format!("component[{i}].{field}");
            if let Err(m) = check_name(&c.name) {
                errors.push(at("name"), m);
            } else if !seen.insert(c.name.as_str()) {
                errors.push(at("name"), format!("`{}` is used by another component", c.name));
            }
            match &c.workload {
                Workload::Wasm(module) if module.trim().is_empty() => {
                    errors.push(at("wasm"), "must name the component's .wasm file");
                }
                Workload::Wasm(_) => {}
                Workload::Oci(oci) => check_oci(oci, &at, &mut ports, errors),
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
            if c.traffic.max_concurrency.is_some_and(|n| !(1..=MAX_CONCURRENCY).contains(&n)) {
                errors.push(at("max_concurrency"), format!("must be between 1 and {MAX_CONCURRENCY}"));
            }
            if c.traffic.max_body_mb.is_some_and(|n| !(1..=MAX_BODY_MB).contains(&n)) {
                errors.push(at("max_body_mb"), format!("must be between 1 and {MAX_BODY_MB} (MB)"));
            }
            for key in c.env.keys() {
                if !is_env_name(key) {
                    errors.push(at(&format!("env.{key}")), "names must match [A-Za-z_][A-Za-z0-9_]*");
                }
            }
        }
        self.network.check(&self.name, errors);
    }
}

impl NetworkSpec {
    fn check(&self, app: &str, errors: &mut ValidationErrors) {
        if self.with.len() > MAX_NETWORK_WITH {
            errors.push("network.with", format!("at most {MAX_NETWORK_WITH} apps"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, other) in self.with.iter().enumerate() {
            let at = format!("network.with[{i}]");
            if let Err(m) = check_name(other) {
                errors.push(at, format!("`{other}` is not an app name: it {m}"));
            } else if other == app {
                errors.push(at, "an app is always on its own network; name other apps");
            } else if !seen.insert(other.as_str()) {
                errors.push(at, format!("`{other}` is named twice"));
            }
        }
    }
}

/// Most ports one container component may serve (Flux's limit).
pub const MAX_OCI_PORTS: usize = 5;

fn check_oci(
    oci: &OciWorkload,
    at: &dyn Fn(&str) -> String,
    public_ports: &mut std::collections::BTreeSet<u16>,
    errors: &mut ValidationErrors,
) {
    if let Err(m) = check_image_ref(&oci.image) {
        errors.push(at("image"), m);
    }
    if let Some(archive) = &oci.archive
        && archive.trim().is_empty()
    {
        errors.push(at("image_archive"), "must name a .tar file (docker save or OCI layout)");
    }
    if oci.ports.len() > MAX_OCI_PORTS {
        errors.push(at("ports"), format!("at most {MAX_OCI_PORTS} ports per component"));
    }
    for (j, p) in oci.ports.iter().enumerate() {
        if p.container == 0 {
            errors.push(at(&format!("ports[{j}]")), "container ports are 1-65535");
        } else if p.public == 0 {
            errors.push(at(&format!("ports[{j}]")), "public ports are 1-65535");
        } else if !public_ports.insert(p.public) {
            errors.push(at(&format!("ports[{j}]")), format!("public port {} is published twice in this app", p.public));
        }
        if let Some(d) = &p.domain
            && !is_domain(d)
        {
            errors.push(at(&format!("ports[{j}].domain")), format!("`{d}` is not a domain name"));
        }
    }
    for (j, c) in oci.commands.iter().enumerate() {
        if c.contains('\0') {
            errors.push(at(&format!("commands[{j}]")), "must not contain NUL");
        }
    }
    for (j, v) in oci.volumes.iter().enumerate() {
        if !v.starts_with('/') || v.contains('\0') || v.split('/').any(|part| part == "..") {
            errors.push(at(&format!("volumes[{j}]")), "must be an absolute path in the container, without `..`");
        }
    }
    if let Some(path) = &oci.health_path
        && (!path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' '))
    {
        errors.push(at("health"), "must be a path such as /healthz");
    }
}

/// Checks an image reference: `[registry/]name[:tag][@digest]`, Docker's characters only.
pub fn check_image_ref(image: &str) -> Result<(), String> {
    let ok_chars = image.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b));
    if image.is_empty() || image.len() > 200 || !ok_chars || image.starts_with(['-', '.', '/', ':', '@']) {
        return Err(
            "must be an image reference such as `nginx:1.27` or `registry.example/app:v2` (at most 200 characters)"
                .into(),
        );
    }
    Ok(())
}

/// Whether `text` is a DNS name: dot-separated labels of letters, digits and dashes.
pub fn is_domain(text: &str) -> bool {
    text.len() <= 253
        && text.contains('.')
        && text.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether `text` is `blake3:<64 hex digits>`.
pub fn is_blob_ref(text: &str) -> bool {
    text.strip_prefix(BLAKE3_PREFIX).is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
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
    const KNOWN: [&str; 8] =
        ["name", "description", "instances", "geolocation", "expire", "component", "network", "secrets"];
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
    let network = parse_network(table.get("network"), errors);
    AppSpec { name, description, instances, geolocation, expire, components, network }
}

fn parse_network(value: Option<&toml::Value>, errors: &mut ValidationErrors) -> NetworkSpec {
    let mut network = NetworkSpec::default();
    let Some(value) = value else { return network };
    let Some(table) = value.as_table() else {
        errors.push("network", "must be a table: [network] with = [\"other-app\"]");
        return network;
    };
    for key in table.keys().filter(|k| k.as_str() != "with") {
        errors.push(format!("network.{key}"), "unknown field (expected with)");
    }
    match table.get("with") {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(name) => network.with.push(name.to_string()),
                    None => errors.push(format!("network.with[{i}]"), "must be an app name (a string)"),
                }
            }
        }
        Some(_) => errors.push("network.with", "must be an array of app names, e.g. [\"db\"]"),
    }
    network
}

fn parse_component(t: &toml::Table, at: &str, errors: &mut ValidationErrors) -> ComponentSpec {
    const KNOWN: [&str; 14] = [
        "name",
        "max_concurrency",
        "max_body_mb",
        "wasm",
        "image",
        "image_archive",
        "ports",
        "commands",
        "volumes",
        "health",
        "cpu",
        "ram",
        "hdd",
        "env",
    ];
    /// Keys that only a container component takes.
    const OCI_ONLY: [&str; 6] = ["image_archive", "ports", "commands", "volumes", "health", "image"];
    for key in t.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        errors.push(format!("{at}{key}"), format!("unknown field (expected one of {})", KNOWN.join(", ")));
    }
    let name = req_str(t, "name", at, errors);
    let workload = match (t.contains_key("wasm"), t.contains_key("image")) {
        (true, false) => {
            for key in OCI_ONLY.iter().filter(|k| t.contains_key(**k)) {
                errors.push(format!("{at}{key}"), "only a container component (`image = ...`) takes this");
            }
            Workload::Wasm(req_str(t, "wasm", at, errors))
        }
        (false, true) => Workload::Oci(parse_oci(t, at, errors)),
        (true, true) => {
            errors.push(format!("{at}image"), "a component runs either `wasm` or `image`, not both");
            Workload::Wasm("placeholder".into())
        }
        (false, false) => {
            errors.push(format!("{at}wasm"), "is required (or `image` for a container)");
            Workload::Wasm("placeholder".into())
        }
    };
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
    let mut small_number = |key: &str| match t.get(key) {
        None => None,
        Some(v) => match v.as_integer().and_then(|i| u32::try_from(i).ok()) {
            Some(n) => Some(n),
            None => {
                errors.push(format!("{at}{key}"), "must be a whole number");
                None
            }
        },
    };
    let traffic =
        Traffic { max_concurrency: small_number("max_concurrency"), max_body_mb: small_number("max_body_mb") };
    ComponentSpec { name, workload, cpu_tenths, ram_mb, hdd_gb, env, traffic }
}

fn parse_oci(t: &toml::Table, at: &str, errors: &mut ValidationErrors) -> OciWorkload {
    let image = req_str(t, "image", at, errors);
    let archive = opt_str(t, "image_archive", at, errors);
    let health_path = opt_str(t, "health", at, errors);
    let mut ports = Vec::new();
    match t.get("ports") {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (j, item) in items.iter().enumerate() {
                let here = format!("{at}ports[{j}]");
                let port = |v: Option<&toml::Value>| v?.as_integer().and_then(|n| u16::try_from(n).ok());
                match item {
                    toml::Value::Integer(_) => match port(Some(item)) {
                        Some(n) => ports.push(OciPort { container: n, public: n, domain: None }),
                        None => errors.push(here, "must be a port, 1-65535"),
                    },
                    toml::Value::Table(p) => {
                        for key in p.keys().filter(|k| !["container", "public", "domain"].contains(&k.as_str())) {
                            errors.push(format!("{here}.{key}"), "unknown field (expected container, public, domain)");
                        }
                        let container = port(p.get("container"));
                        let domain = opt_str(p, "domain", &format!("{here}."), errors);
                        match container {
                            Some(c) => {
                                let public = if p.contains_key("public") { port(p.get("public")) } else { Some(c) };
                                match public {
                                    Some(public) => ports.push(OciPort { container: c, public, domain }),
                                    None => errors.push(format!("{here}.public"), "must be a port, 1-65535"),
                                }
                            }
                            None => errors.push(format!("{here}.container"), "is required: a port, 1-65535"),
                        }
                    }
                    _ => errors.push(here, "must be a port or { container = 80, public = 8080, domain = \"...\" }"),
                }
            }
        }
        Some(_) => errors.push(format!("{at}ports"), "must be an array, e.g. [8080]"),
    }
    let strings = |key: &str, errors: &mut ValidationErrors| -> Vec<String> {
        match t.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(j, v)| {
                    let s = v.as_str().map(str::to_string);
                    if s.is_none() {
                        errors.push(format!("{at}{key}[{j}]"), "must be a string");
                    }
                    s
                })
                .collect(),
            Some(_) => {
                errors.push(format!("{at}{key}"), "must be an array of strings");
                Vec::new()
            }
        }
    };
    let commands = strings("commands", errors);
    let volumes = strings("volumes", errors);
    OciWorkload { image, archive, ports, commands, volumes, health_path }
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
    // A Flux v8 spec has no secrets: its environment is public, as on Flux.
    if text.trim_start().starts_with('{') {
        return Ok(BTreeMap::new());
    }
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
