//! Flux v8 app specs: FluxOS's JSON format, read with FluxOS's own rules (v8.17,
//! `ZelBack/src/services/appRequirements/appValidator.js`), so that a developer who comes from
//! Flux can deploy the spec they have.
//!
//! [`FluxSpec::parse`] reports every broken rule by its field path, and a spec that breaks one
//! rule gets exactly one error. Features we do not run yet (replicated volumes, enterprise
//! specs, pinned nodes, private registries, static IPs, data centers) are refused by name,
//! never ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::spec::{AppSpec, ComponentSpec, GeoRule, OciPort, OciWorkload, ValidationErrors, Workload, is_env_name};

/// Top-level keys of a v8 spec.
const APP_KEYS: [&str; 13] = [
    "version",
    "name",
    "description",
    "owner",
    "compose",
    "instances",
    "contacts",
    "geolocation",
    "expire",
    "nodes",
    "staticip",
    "datacenter",
    "enterprise",
];
/// Keys of a v8 component.
const COMPONENT_KEYS: [&str; 13] = [
    "name",
    "description",
    "repotag",
    "ports",
    "containerPorts",
    "environmentParameters",
    "commands",
    "containerData",
    "domains",
    "repoauth",
    "cpu",
    "ram",
    "hdd",
];
/// Ports FluxOS keeps for itself and for services a node must not expose.
const BANNED_PORTS: [(u16, u16); 3] = [(16100, 16299), (26100, 26299), (30000, 30099)];
const BANNED_PORT_LIST: [u16; 16] =
    [8384, 27017, 22, 23, 25, 3389, 5900, 5800, 161, 512, 513, 5901, 3388, 4444, 123, 53];
/// Most blocks an app may be registered for.
pub const MAX_EXPIRE: u64 = 1_056_000;
/// The largest app a node can take (Stratus): cores, MB of memory, GB of disk.
pub const MAX_APP_CPU: f64 = 15.0;
/// See [`MAX_APP_CPU`].
pub const MAX_APP_RAM_MB: u64 = 59_000;
/// See [`MAX_APP_CPU`].
pub const MAX_APP_HDD_GB: u64 = 820;

/// A Flux v8 app spec, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FluxSpec {
    /// App name.
    pub name: String,
    /// Description.
    pub description: String,
    /// The owner's Flux address, as written (fluxplane signs with its own key).
    pub owner: String,
    /// Components.
    pub compose: Vec<FluxComponent>,
    /// Instances.
    pub instances: u32,
    /// Geolocation rules.
    pub geolocation: Vec<GeoRule>,
    /// Lease in blocks.
    pub expire: u32,
    /// The apps named by a `networkWith:[a,b]` token in the description, as FluxOS reads it.
    pub network_with: Vec<String>,
}

/// One component of a Flux v8 spec.
#[derive(Debug, Clone, PartialEq)]
pub struct FluxComponent {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Image, `name:tag`.
    pub repotag: String,
    /// Published ports.
    pub ports: Vec<u16>,
    /// The container's ports, one per published port.
    pub container_ports: Vec<u16>,
    /// Custom domains, one per published port (empty string: none).
    pub domains: Vec<String>,
    /// `KEY=VALUE` environment entries.
    pub environment: Vec<String>,
    /// Command arguments.
    pub commands: Vec<String>,
    /// A local volume's path in the container, if any.
    pub container_data: Option<String>,
    /// Cores, in tenths.
    pub cpu_tenths: u32,
    /// Memory, MB.
    pub ram_mb: u32,
    /// Disk, GB.
    pub hdd_gb: u32,
}

impl FluxSpec {
    /// Reads and checks a v8 spec.
    pub fn parse(json: &str) -> Result<FluxSpec, ValidationErrors> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| ValidationErrors::one("spec", format!("not valid JSON: {e}")))?;
        let Value::Object(app) = value else {
            return Err(ValidationErrors::one("spec", "must be a JSON object"));
        };
        let mut errors = ValidationErrors::default();
        let spec = read_app(&app, &mut errors);
        errors.into_result().map(|()| spec)
    }
}

impl FluxSpec {
    /// The spec as our manifest: every component a container of its `repotag`, its ports
    /// published under their Flux port numbers, `containerData` a local volume. Names are
    /// lowercased (Flux's are case-insensitive; ours are DNS labels). Errors name the Flux
    /// field they come from.
    pub fn to_app_spec(&self) -> Result<AppSpec, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let mut components = Vec::new();
        for (i, c) in self.compose.iter().enumerate() {
            let mut env = BTreeMap::new();
            for (j, entry) in c.environment.iter().enumerate() {
                match entry.split_once('=') {
                    Some((key, value)) if is_env_name(key) => {
                        env.insert(key.to_string(), value.to_string());
                    }
                    _ => errors.push(
                        format!("compose[{i}].environmentParameters[{j}]"),
                        "must be KEY=VALUE, the key letters, digits and `_`",
                    ),
                }
            }
            let ports = c
                .ports
                .iter()
                .zip(&c.container_ports)
                .zip(&c.domains)
                .map(|((public, container), domain)| OciPort {
                    container: *container,
                    public: *public,
                    domain: Some(domain.trim().to_ascii_lowercase()).filter(|d| !d.is_empty()),
                })
                .collect();
            components.push(ComponentSpec {
                name: c.name.to_ascii_lowercase(),
                workload: Workload::Oci(OciWorkload {
                    image: c.repotag.clone(),
                    archive: None,
                    ports,
                    commands: c.commands.clone(),
                    volumes: c.container_data.iter().cloned().collect(),
                    health_path: None,
                }),
                cpu_tenths: c.cpu_tenths,
                ram_mb: c.ram_mb,
                hdd_gb: c.hdd_gb,
                env,
                traffic: Default::default(),
            });
        }
        let name = self.name.to_ascii_lowercase();
        // FluxOS ignores a link to the app itself; names are case-insensitive there.
        let with = self.network_with.iter().map(|n| n.to_ascii_lowercase()).filter(|n| *n != name).collect();
        let spec = AppSpec {
            name,
            description: self.description.clone(),
            instances: self.instances,
            geolocation: self.geolocation.clone(),
            expire: self.expire,
            components,
            network: crate::spec::NetworkSpec { with },
        };
        // What Flux allows and our manifest does not (an env name with a dot, say), by our
        // paths, with the Flux field they came from.
        if let Err(ours) = spec.validate() {
            for e in ours.0 {
                let path = e.path.replacen("component[", "compose[", 1).replace(".image", ".repotag");
                let path = if path.starts_with("network.with") { "description".to_string() } else { path };
                errors.push(path, e.message);
            }
        }
        errors.into_result().map(|()| spec)
    }
}

fn read_app(app: &Map<String, Value>, errors: &mut ValidationErrors) -> FluxSpec {
    unknown_keys(app, &APP_KEYS, "", errors);
    match app.get("version").and_then(Value::as_u64) {
        Some(8) => {}
        _ => errors.push("version", "must be 8: only Flux v8 specs are read"),
    }
    let name = string(app, "name", "", errors);
    if let Err(m) = check_app_name(&name) {
        errors.push("name", m);
    }
    let description = string(app, "description", "", errors);
    if description.chars().count() > 256 {
        errors.push("description", "must be at most 256 characters");
    }
    let owner = string(app, "owner", "", errors);
    let instances = number(app, "instances", "", errors).unwrap_or(1.0);
    if instances.fract() != 0.0 || !(1.0..=100.0).contains(&instances) {
        errors.push("instances", "must be a whole number from 1 to 100");
    }
    let expire = number(app, "expire", "", errors).unwrap_or(22_000.0);
    if expire.fract() != 0.0 || !(1.0..=MAX_EXPIRE as f64).contains(&expire) {
        errors.push("expire", format!("must be a whole number of blocks from 1 to {MAX_EXPIRE}"));
    }
    let mut geolocation = Vec::new();
    let rules = strings(app, "geolocation", "", errors);
    if rules.len() > 10 {
        errors.push("geolocation", "at most 10 entries");
    }
    for (i, rule) in rules.iter().enumerate() {
        match GeoRule::parse(rule) {
            Ok(r) => geolocation.push(r),
            Err(m) => errors.push(format!("geolocation[{i}]"), m),
        }
    }
    let _contacts = strings(app, "contacts", "", errors);
    // Features not run here: refused by name, never ignored.
    if !strings(app, "nodes", "", errors).is_empty() {
        errors.push("nodes", "pinning an app to chosen nodes is not supported yet; remove `nodes`");
    }
    if app.get("enterprise").and_then(Value::as_str).is_some_and(|e| !e.is_empty()) {
        errors.push("enterprise", "enterprise (encrypted) specs are not supported yet");
    }
    for flag in ["staticip", "datacenter"] {
        match app.get(flag) {
            None | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => errors.push(flag, format!("`{flag}: true` is not supported yet")),
            Some(_) => errors.push(flag, "must be true or false"),
        }
    }
    let mut compose = Vec::new();
    match app.get("compose") {
        Some(Value::Array(items)) => {
            if !(1..=10).contains(&items.len()) {
                errors.push("compose", "must hold 1 to 10 components");
            }
            for (i, item) in items.iter().enumerate() {
                let at = format!("compose[{i}].");
                match item.as_object() {
                    Some(c) => compose.push(read_component(c, &at, errors)),
                    None => errors.push(format!("compose[{i}]"), "must be an object"),
                }
            }
        }
        _ => errors.push("compose", "must be an array of 1 to 10 components"),
    }
    check_app_wide(&compose, errors);
    let network_with = parse_network_with(&description);
    FluxSpec {
        name,
        description,
        owner,
        compose,
        instances: instances as u32,
        geolocation,
        expire: expire as u32,
        network_with,
    }
}

/// The apps named by FluxOS's `networkWith` token in a description (v8.17,
/// `appNetworkLinker.js`): the first `networkWith`, in any case, starting a word and followed
/// by `:` or `=` and a bracketed, comma-separated list (`networkWith:[appA, "appB"]`). Quotes
/// around names are dropped; names that are not app names, and repeats, are skipped as FluxOS
/// skips them. No token, or a malformed one, names nothing.
pub fn parse_network_with(description: &str) -> Vec<String> {
    const KEY: &str = "networkwith";
    let lower = description.to_ascii_lowercase();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(found) = lower.get(from..).and_then(|rest| rest.find(KEY)) {
        let start = from + found;
        from = start + KEY.len();
        if start > 0 && lower.as_bytes().get(start - 1).copied().is_some_and(is_word) {
            continue;
        }
        let rest = description.get(from..).unwrap_or_default().trim_start();
        let Some(rest) = rest.strip_prefix([':', '=']) else { continue };
        let Some(rest) = rest.trim_start().strip_prefix('[') else { continue };
        let Some((list, _)) = rest.split_once(']') else { continue };
        let mut names: Vec<String> = Vec::new();
        for raw in list.split(',') {
            let name = raw.trim().trim_matches(['"', '\'']).trim();
            let flux_name = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
            if flux_name && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push(name.to_string());
            }
        }
        return names;
    }
    Vec::new()
}

fn read_component(c: &Map<String, Value>, at: &str, errors: &mut ValidationErrors) -> FluxComponent {
    unknown_keys(c, &COMPONENT_KEYS, at, errors);
    let name = string(c, "name", at, errors);
    let component_name_ok =
        !name.is_empty() && name.len() <= 63 && name.bytes().all(|b| b.is_ascii_alphanumeric()) && !reserved(&name);
    if !component_name_ok {
        errors.push(format!("{at}name"), "must be 1 to 63 letters and digits, not starting with `zel` or `flux`");
    }
    let description = string(c, "description", at, errors);
    if description.chars().count() > 256 {
        errors.push(format!("{at}description"), "must be at most 256 characters");
    }
    let repotag = string(c, "repotag", at, errors);
    if repotag.is_empty() || repotag.chars().count() > 200 {
        errors.push(format!("{at}repotag"), "must name an image (name:tag) in at most 200 characters");
    }
    let ports = port_list(c, "ports", at, errors);
    let container_ports = port_list(c, "containerPorts", at, errors);
    let domains = strings(c, "domains", at, errors);
    if ports.len() > 5 {
        errors.push(format!("{at}ports"), "at most 5 ports per component");
    } else if container_ports.len() != ports.len() || domains.len() != ports.len() {
        errors.push(
            format!("{at}containerPorts"),
            format!(
                "ports ({}), containerPorts ({}) and domains ({}) must have the same length",
                ports.len(),
                container_ports.len(),
                domains.len()
            ),
        );
    }
    let environment = strings(c, "environmentParameters", at, errors);
    let commands = strings(c, "commands", at, errors);
    for (field, list) in [("environmentParameters", &environment), ("commands", &commands)] {
        if list.len() > 20 || list.iter().any(|s| s.chars().count() > 400) {
            errors.push(format!("{at}{field}"), "at most 20 entries of at most 400 characters");
        }
    }
    let data = string(c, "containerData", at, errors);
    let container_data = if data.is_empty() {
        None
    } else if ["r:", "g:", "s:"].iter().any(|flag| data.contains(flag)) {
        errors.push(
            format!("{at}containerData"),
            "replicated volumes (the r:, g: and s: flags) are not supported yet; give a plain path for a local volume",
        );
        None
    } else {
        Some(data)
    };
    if !string(c, "repoauth", at, errors).is_empty() {
        errors.push(format!("{at}repoauth"), "private registries (repoauth) are not supported yet");
    }
    let cpu = number(c, "cpu", at, errors).unwrap_or(0.1);
    let cpu_tenths = (cpu * 10.0).round();
    if cpu < 0.1 || (cpu * 10.0 - cpu_tenths).abs() > 1e-6 {
        errors.push(format!("{at}cpu"), "must be in steps of 0.1, at least 0.1");
    }
    let ram = number(c, "ram", at, errors).unwrap_or(100.0);
    if ram < 100.0 || ram.fract() != 0.0 || ram as u64 % 100 != 0 {
        errors.push(format!("{at}ram"), "must be a multiple of 100 MB, at least 100");
    }
    let hdd = number(c, "hdd", at, errors).unwrap_or(1.0);
    if hdd < 1.0 || hdd.fract() != 0.0 {
        errors.push(format!("{at}hdd"), "must be a whole number of GB, at least 1");
    }
    FluxComponent {
        name,
        description,
        repotag,
        ports,
        container_ports,
        domains,
        environment,
        commands,
        container_data,
        cpu_tenths: cpu_tenths.clamp(0.0, u32::MAX as f64) as u32,
        ram_mb: ram.clamp(0.0, u32::MAX as f64) as u32,
        hdd_gb: hdd.clamp(0.0, u32::MAX as f64) as u32,
    }
}

/// Rules across components: unique names, unique ports, and totals that fit one node.
fn check_app_wide(compose: &[FluxComponent], errors: &mut ValidationErrors) {
    let mut names = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for (i, c) in compose.iter().enumerate() {
        if !c.name.is_empty() && !names.insert(c.name.to_ascii_lowercase()) {
            errors.push(format!("compose[{i}].name"), format!("`{}` is used by another component", c.name));
        }
        for (k, port) in c.ports.iter().enumerate() {
            if *port != 0 && !ports.insert(*port) {
                errors.push(format!("compose[{i}].ports[{k}]"), format!("port {port} is used by another component"));
            }
        }
    }
    let cpu: u64 = compose.iter().map(|c| u64::from(c.cpu_tenths)).sum();
    let ram: u64 = compose.iter().map(|c| u64::from(c.ram_mb)).sum();
    let hdd: u64 = compose.iter().map(|c| u64::from(c.hdd_gb)).sum();
    if cpu as f64 / 10.0 > MAX_APP_CPU || ram > MAX_APP_RAM_MB || hdd > MAX_APP_HDD_GB {
        errors.push(
            "compose",
            format!(
                "the components need {:.1} cores, {ram} MB and {hdd} GB; the largest node (Stratus) takes at most \
                 {MAX_APP_CPU:.1} cores, {MAX_APP_RAM_MB} MB and {MAX_APP_HDD_GB} GB",
                cpu as f64 / 10.0
            ),
        );
    }
}

/// FluxOS's app name rule.
fn check_app_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = !name.is_empty()
        && name.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if !ok {
        return Err("must be 1 to 63 letters, digits and inner hyphens".into());
    }
    if reserved(name) {
        return Err("must not start with `zel` or `flux`".into());
    }
    Ok(())
}

fn reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("zel") || lower.starts_with("flux")
}

fn unknown_keys(map: &Map<String, Value>, known: &[&str], at: &str, errors: &mut ValidationErrors) {
    for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
        errors.push(format!("{at}{key}"), format!("unknown field (a v8 spec has {})", known.join(", ")));
    }
}

fn string(map: &Map<String, Value>, key: &str, at: &str, errors: &mut ValidationErrors) -> String {
    match map.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            errors.push(format!("{at}{key}"), "must be a string");
            String::new()
        }
    }
}

fn number(map: &Map<String, Value>, key: &str, at: &str, errors: &mut ValidationErrors) -> Option<f64> {
    match map.get(key) {
        None => None,
        Some(Value::Number(n)) => n.as_f64(),
        // FluxOS specs often carry numbers as strings ("0.5").
        Some(Value::String(s)) => s.trim().parse().ok().or_else(|| {
            errors.push(format!("{at}{key}"), "must be a number");
            None
        }),
        Some(_) => {
            errors.push(format!("{at}{key}"), "must be a number");
            None
        }
    }
}

fn strings(map: &Map<String, Value>, key: &str, at: &str, errors: &mut ValidationErrors) -> Vec<String> {
    match map.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let texts: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(String::from)).collect();
            texts.unwrap_or_else(|| {
                errors.push(format!("{at}{key}"), "must be an array of strings");
                Vec::new()
            })
        }
        Some(_) => {
            errors.push(format!("{at}{key}"), "must be an array of strings");
            Vec::new()
        }
    }
}

fn port_list(map: &Map<String, Value>, key: &str, at: &str, errors: &mut ValidationErrors) -> Vec<u16> {
    let Some(Value::Array(items)) = map.get(key) else {
        if map.get(key).is_some_and(|v| !v.is_null()) {
            errors.push(format!("{at}{key}"), "must be an array of ports");
        }
        return Vec::new();
    };
    let mut ports = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let port = match item {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        // A bad port is still counted (as 0, which no rule below looks at), so that it is one
        // error and not also a length mismatch.
        match port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p >= 1) {
            Some(p) if banned(p) && key == "ports" => {
                errors.push(format!("{at}{key}[{i}]"), format!("port {p} is reserved on Flux nodes"));
                ports.push(p);
            }
            Some(p) => ports.push(p),
            None => {
                errors.push(format!("{at}{key}[{i}]"), "must be a port from 1 to 65535");
                ports.push(0);
            }
        }
    }
    ports
}

fn banned(port: u16) -> bool {
    BANNED_PORT_LIST.contains(&port) || BANNED_PORTS.iter().any(|(first, last)| (*first..=*last).contains(&port))
}

#[cfg(test)]
mod tests;
