//! `fluxctl app`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use client::Client;
use comfy_table::Table;
use model::api::{AppView, SubmitTxResponse, TxStatus};
use model::blob::BlobKind;
use model::chain::Tx;
use model::keys::Keypair;
use model::spec::{AppSpec, BLAKE3_PREFIX};
use model::tier::format_flux;

use super::{Cli, Output, print_json, short, sign_and_submit};
use crate::keys;

/// App verbs.
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Register (or update, if you own it) the app in a manifest.
    Deploy {
        /// The manifest, e.g. examples/hello/fluxapp.toml, or a Flux v8 app spec (.json).
        file: PathBuf,
        /// Follow the deploy until every instance runs, then print the URL.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Upload a module from outside the manifest's directory (refused by default, so a
        /// manifest cannot publish `/etc/passwd` or a key by naming it).
        #[arg(long)]
        allow_outside: bool,
        /// Check the manifest, its modules, the price and whether the nodes on chain could
        /// ever run it, and send nothing (no upload, no transaction).
        #[arg(long)]
        dry_run: bool,
    },
    /// Change how many instances an app runs (owner only).
    Scale {
        /// App name.
        name: String,
        /// Instances wanted.
        instances: u32,
    },
    /// List apps.
    List,
    /// One app's placements and instance states.
    Status {
        /// App name.
        name: String,
    },
    /// Values the app reads as environment variables that are not published (owner only).
    Secret {
        /// What to do.
        #[command(subcommand)]
        cmd: SecretCommand,
    },
    /// Remove an app (owner only).
    Rm {
        /// App name.
        name: String,
    },
    /// Print the output of the app's instances, read from the nodes that run them (owner only).
    Logs {
        /// App name.
        name: String,
        /// Only this instance (`app@node`, as `app status` lists them).
        #[arg(long)]
        instance: Option<String>,
        /// Keep printing lines as they are written.
        #[arg(long)]
        follow: bool,
        /// Only lines written in the last DURATION (e.g. `10m`, `1h`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// Only the last N lines of each component.
        #[arg(long)]
        tail: Option<usize>,
    },
}

/// Secret verbs.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set secrets: sealed here to each region's key, sent signed by the owner, and opened only
    /// for the nodes that run the app. Instances restart to read them.
    Set {
        /// App name.
        name: String,
        /// `KEY=VALUE`, or `KEY=@FILE` to read the value from a file (a value on the command
        /// line can end up in the shell's history).
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Remove secrets by name (instances restart without them).
    Rm {
        /// App name.
        name: String,
        /// Secret names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub(super) async fn run(cli: &Cli, api: &Client, cmd: &AppCommand) -> anyhow::Result<()> {
    match cmd {
        AppCommand::Deploy { file, wait: _, timeout: _, allow_outside, dry_run: true } => {
            dry_run(cli, api, file, *allow_outside).await
        }
        AppCommand::Deploy { file, wait, timeout, allow_outside, dry_run: false } => {
            deploy(cli, api, file, *wait, Duration::from_secs(*timeout), *allow_outside).await
        }
        AppCommand::Scale { name, instances } => scale(cli, api, name, *instances).await,
        AppCommand::List => list(cli, api).await,
        AppCommand::Status { name } => status(cli, api, name).await,
        AppCommand::Rm { name } => rm(cli, api, name).await,
        AppCommand::Logs { name, instance, follow, since, tail } => {
            logs(cli, api, name, instance.as_deref(), *follow, *since, *tail).await
        }
        AppCommand::Secret { cmd: SecretCommand::Set { name, values } } => set_secrets(cli, api, name, values).await,
        AppCommand::Secret { cmd: SecretCommand::Rm { name, names } } => {
            let (key, _) = keys::load(cli.key.as_ref())?;
            seal_and_send(api, &key, name, &Default::default(), names).await
        }
    }
}

/// Reads a manifest, checks the app with the control plane (valid, placeable, and not another
/// key's), publishes the modules it lacks (paid for by `key`), and returns the spec in chain
/// form. Nothing is paid for an app that would be refused. A module must be inside the
/// manifest's directory unless `allow_outside`: uploads are public.
pub async fn prepare(api: &Client, key: &Keypair, file: &Path, allow_outside: bool) -> anyhow::Result<AppSpec> {
    let (spec, blobs) = read_manifest(file, allow_outside)?;
    let check = api.check_app(&spec).await.context("checking the app with the control plane")?;
    if let Some(owner) = check.owner.as_ref().filter(|o| **o != key.public()) {
        anyhow::bail!("`{}` belongs to {owner}; only its owner may update it", spec.name);
    }
    if !check.feasible {
        anyhow::bail!(
            "`{}` cannot be placed: {} (422 infeasible)",
            spec.name,
            check.reason.as_deref().unwrap_or("no set of nodes on chain could run it")
        );
    }
    let missing: Vec<(String, Vec<u8>)> = blobs
        .into_iter()
        .filter(|(hash, _)| check.missing_modules.iter().any(|m| m.strip_prefix(BLAKE3_PREFIX) == Some(hash.as_str())))
        .collect();
    if !missing.is_empty() {
        let done = client::blobs::publish(api, key, &missing).await.context("publishing the modules")?;
        if done.paid > 0 {
            eprintln!("paid {} FLUX to store {} blob(s) (a fee per started MB)", format_flux(done.fee), done.paid);
        }
        eprintln!("uploaded {} blob(s)", done.uploaded);
    }
    Ok(spec)
}

/// `deploy --dry-run`: what the deploy would do, sending nothing.
async fn dry_run(cli: &Cli, api: &Client, file: &Path, allow_outside: bool) -> anyhow::Result<()> {
    let (spec, _) = read_manifest(file, allow_outside)?;
    let check = api.check_app(&spec).await.context("checking the app with the control plane")?;
    // The fee depends on the signed size; any nonce of the same width gives it.
    let key = keys::load(cli.key.as_ref()).ok().map(|(key, _)| key);
    let signer = key.clone().unwrap_or_else(Keypair::generate);
    let tx = if check.exists {
        Tx::AppUpdate { spec, payment: check.price }
    } else {
        Tx::AppRegister { spec, payment: check.price }
    };
    let fee = model::chain::SignedTx::sign(tx, 1, &signer).fee();
    let mine = key.as_ref().map(Keypair::public);
    let action = match &check.owner {
        None => "registered".to_string(),
        Some(owner) if Some(owner) == mine.as_ref() => "updated".to_string(),
        Some(owner) => format!("refused: the name is taken by {owner}"),
    };
    println!(
        "dry run: `{}` would be {action}, paying {} FLUX and a {} FLUX fee",
        check.name,
        format_flux(check.price),
        format_flux(fee)
    );
    let quotas: Vec<String> = check.quotas.iter().map(|(r, n)| format!("{r} {n}")).collect();
    println!("  instances per region: {}", if quotas.is_empty() { "none".into() } else { quotas.join(", ") });
    if check.missing_modules.is_empty() {
        println!("  modules: already uploaded");
    } else {
        println!("  modules to upload: {}", check.missing_modules.join(", "));
    }
    match &check.reason {
        None if check.feasible => println!("  feasible: yes"),
        reason => println!("  feasible: no: {}", reason.as_deref().unwrap_or("no reason given")),
    }
    let secrets = read_manifest_secrets(file)?;
    if !secrets.is_empty() {
        println!("  secrets: {} (sealed and set once the app is on chain)", pairs_names(&secrets));
    }
    println!("nothing was sent");
    anyhow::ensure!(check.feasible, "`{}` cannot be placed on the nodes on chain", check.name);
    anyhow::ensure!(
        check.owner.is_none() || check.owner == mine,
        "`{}` is registered by another key; only its owner can update it",
        check.name
    );
    Ok(())
}

/// The manifest's `[secrets]`, with `@FILE` values read (relative to the manifest).
fn read_manifest_secrets(file: &Path) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let written =
        model::spec::manifest_secrets(&text).map_err(|e| anyhow::anyhow!("{} is invalid:\n{e}", file.display()))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut values = std::collections::BTreeMap::new();
    for (name, value) in written {
        let bytes = match value.strip_prefix('@') {
            Some(path) => std::fs::read(dir.join(path))
                .with_context(|| format!("secrets.{name}: reading {}", dir.join(path).display()))?,
            None => value.into_bytes(),
        };
        values.insert(name, bytes);
    }
    Ok(values)
}

/// `app secret set`: seals each value to every region's key and sends it to that region.
async fn set_secrets(cli: &Cli, api: &Client, app: &str, pairs: &[String]) -> anyhow::Result<()> {
    let (key, _) = keys::load(cli.key.as_ref())?;
    let mut values = std::collections::BTreeMap::new();
    for pair in pairs {
        let (name, value) = pair.split_once('=').with_context(|| format!("`{pair}` is not KEY=VALUE"))?;
        anyhow::ensure!(
            model::spec::is_env_name(name),
            "secret name `{name}` must match [A-Za-z_][A-Za-z0-9_]*: the app reads it as an environment variable"
        );
        let bytes = match value.strip_prefix('@') {
            Some(path) => std::fs::read(path).with_context(|| format!("reading the value of {name} from {path}"))?,
            None => value.as_bytes().to_vec(),
        };
        values.insert(name.to_string(), bytes);
    }
    seal_and_send(api, &key, app, &values, &[]).await
}

/// Seals `values` to every region's key and sends them to that region, signed by `key`.
async fn seal_and_send(
    api: &Client,
    key: &Keypair,
    app: &str,
    values: &std::collections::BTreeMap<String, Vec<u8>>,
    unset: &[String],
) -> anyhow::Result<()> {
    for (name, value) in values {
        // The guest reads an environment variable: text, which a NUL byte would cut short.
        anyhow::ensure!(
            std::str::from_utf8(value).is_ok() && !value.contains(&0),
            "the value of {name} is not UTF-8 text without NUL bytes (encode binary values, e.g. in base64)"
        );
    }
    let view = api.app(app).await.with_context(|| format!("looking up `{app}`"))?;
    anyhow::ensure!(
        view.owner == key.public(),
        "`{app}` is owned by {}; only its owner can change its secrets (this key is {})",
        view.owner,
        key.public()
    );
    // Every region: the app may be placed, or spill, anywhere its rules allow.
    let regions = api.regions().await.context("listing the regions")?;
    let at_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let what = match (values.is_empty(), unset.is_empty()) {
        (false, true) => format!("{} set", pairs_names(values)),
        (true, false) => format!("{} removed", unset.join(", ")),
        _ => format!("{} set, {} removed", pairs_names(values), unset.join(", ")),
    };
    let mut failed = Vec::new();
    for region in regions {
        let urls = region.urls();
        if urls.is_empty() {
            // Nothing runs there before a control plane does; set the secrets again after.
            eprintln!("{}: skipped: no control replica is published for it yet", region.name);
            continue;
        }
        let result = async {
            let region_api = Client::new(urls)?;
            let sealing = region_api.secrets_key().await.context("asking for its secrets key")?;
            anyhow::ensure!(sealing.region == region.name, "its replicas serve region {}", sealing.region);
            let mut sealed = std::collections::BTreeMap::new();
            for (name, value) in values {
                let context = model::api::secret_context(app, name, &region.name);
                sealed.insert(
                    name.clone(),
                    model::sealed::seal(&sealing.key, &context, value).map_err(anyhow::Error::msg)?,
                );
            }
            let update =
                model::api::SecretsUpdate::sign_with_unset(app, &region.name, sealed, unset.to_vec(), at_ms, key);
            // Right after a deploy a region may not have applied the app's block yet.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match region_api.put_secrets(&update).await {
                    Err(e) if e.is_not_found() && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    other => return Ok(other?),
                }
            }
        }
        .await;
        match result {
            Ok(stored) => eprintln!("{}: {what} (holds {})", region.name, stored.names.join(", ")),
            Err(e) => {
                eprintln!("{}: not changed: {e:#}", region.name);
                failed.push(region.name);
            }
        }
    }
    anyhow::ensure!(failed.is_empty(), "secrets not changed in {}; run the command again", failed.join(", "));
    Ok(())
}

fn pairs_names(values: &std::collections::BTreeMap<String, Vec<u8>>) -> String {
    values.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// The modules and image archives a manifest names: `(blake3 hex, bytes)`.
type ManifestBlobs = Vec<(String, Vec<u8>)>;

/// Reads a manifest and returns the spec in chain form (modules by hash), with the bytes of
/// each module and image archive it names, by hash.
fn read_manifest(file: &Path, allow_outside: bool) -> anyhow::Result<(AppSpec, ManifestBlobs)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut spec = AppSpec::from_manifest(&text).map_err(|e| anyhow::anyhow!("{} is invalid:\n{e}", file.display()))?;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let home = dir.canonicalize().with_context(|| format!("reading {}", dir.display()))?;
    let mut blobs = Vec::new();
    for (i, c) in spec.components.iter_mut().enumerate() {
        for (field, blob) in c.blobs_mut() {
            let what = if field == "wasm" { "module" } else { "image archive" };
            let path = dir.join(&*blob);
            let real =
                path.canonicalize().with_context(|| format!("component[{i}].{field}: reading {}", path.display()))?;
            anyhow::ensure!(
                allow_outside || real.starts_with(&home),
                "component[{i}].{field}: {} is outside the manifest's directory {}; {what}s are published, so only \
                 files beside the manifest are uploaded (move it there, or pass --allow-outside)",
                path.display(),
                home.display()
            );
            // The checked file itself, not the path again (a link swapped in between is not followed).
            let bytes =
                std::fs::read(&real).with_context(|| format!("component[{i}].{field}: reading {}", path.display()))?;
            // Checked as the control plane checks it, before anything is paid for it.
            let want = if field == "wasm" { BlobKind::Component } else { BlobKind::ImageArchive };
            match model::blob::check(&bytes) {
                Ok(kind) if kind == want => {}
                Ok(_) => {
                    let expected = if field == "wasm" { "a WebAssembly component" } else { "an image archive" };
                    anyhow::bail!("component[{i}].{field}: {} is not {expected}", path.display())
                }
                Err(e) => anyhow::bail!("component[{i}].{field}: {}: {e}", path.display()),
            }
            let hash = blake3::hash(&bytes).to_hex().to_string();
            blobs.push((hash.clone(), bytes));
            *blob = format!("{BLAKE3_PREFIX}{hash}");
        }
    }
    Ok((spec, blobs))
}

/// Signs and submits a register (or, for an app that exists, an update) of `spec`. Returns
/// whether it was an update.
pub async fn submit_spec(api: &Client, key: &Keypair, spec: AppSpec) -> anyhow::Result<(SubmitTxResponse, bool)> {
    // Only a clear "not registered" means new: a control plane that cannot be asked must not
    // turn an update into a register.
    let update = match api.app(&spec.name).await {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("checking whether `{}` exists", spec.name))),
    };
    let payment = model::price::app_price(&spec);
    let tx = if update { Tx::AppUpdate { spec, payment } } else { Tx::AppRegister { spec, payment } };
    Ok((sign_and_submit(api, key, tx, false).await?, update))
}

async fn wait_included(api: &Client, tx_id: &str, deadline: Instant) -> anyhow::Result<u64> {
    loop {
        match api.tx_status(tx_id).await {
            Ok(TxStatus::Included { height }) => return Ok(height),
            Ok(TxStatus::Rejected { reason }) => anyhow::bail!("the chain rejected the transaction: {reason}"),
            Ok(TxStatus::Pending | TxStatus::Unknown) => {}
            // The chain or a replica may be restarting; keep asking until the deadline.
            Err(e) if e.is_unreachable() && Instant::now() < deadline => {}
            Err(e) => return Err(e.into()),
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for a block");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn deploy(
    cli: &Cli,
    api: &Client,
    file: &Path,
    wait: bool,
    timeout: Duration,
    allow_outside: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + timeout;
    let (key, _) = keys::load(cli.key.as_ref())?;
    let secrets = read_manifest_secrets(file)?;
    let spec = prepare(api, &key, file, allow_outside).await?;
    let name = spec.name.clone();
    let price = model::price::app_price(&spec);
    let spec_domains = spec.domains();
    let (resp, update) = submit_spec(api, &key, spec).await?;
    let url = format!("http://{name}.app.{}/", cli.gateway);
    eprintln!(
        "{} `{name}`: tx {} paying {} FLUX",
        if update { "updating" } else { "registering" },
        short(&resp.tx_id, 12),
        format_flux(price)
    );
    let domains = spec_domains;
    if !wait && secrets.is_empty() {
        for domain in &domains {
            eprintln!(
                "domain {domain} is served only once proven: add a DNS TXT record {} with the value {} \
                 (`fluxctl app status {name}` shows where it stands)",
                model::domains::txt_name(domain),
                key.public()
            );
        }
        println!("{url}");
        return Ok(());
    }
    let height = wait_included(api, &resp.tx_id, deadline).await?;
    eprintln!("registered in block {height} ({:.1}s)", started.elapsed().as_secs_f64());
    if !secrets.is_empty() {
        // Secrets are set by the owner of an app on chain: once the shard has the block.
        loop {
            match api.app(&name).await {
                Ok(app) if app.updated_height >= height => break,
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            anyhow::ensure!(Instant::now() < deadline, "timed out waiting for `{name}` on chain to set its secrets");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seal_and_send(api, &key, &name, &secrets, &[]).await?;
    }
    if !wait {
        report_domains(api, &name, height, Instant::now() + DOMAIN_CHECK_WAIT).await?;
        println!("{url}");
        return Ok(());
    }
    let (mut last_placed, mut last_running) = (usize::MAX, usize::MAX);
    loop {
        let app = match api.app(&name).await {
            Ok(app) => Some(app),
            // The block is on chain but not yet applied by the shard that answered.
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(app) = app {
            // While a region's quota spills, it and its stand-in both count it: never more than
            // the app asks for.
            let want: u32 = app.quotas.values().sum::<u32>().min(app.instances);
            let placed = app.placements.len();
            let running = app.running();
            if (placed, running) != (last_placed, last_running) {
                eprintln!("placed {placed}/{want}, running {running}/{want} ({:.1}s)", started.elapsed().as_secs_f64());
                (last_placed, last_running) = (placed, running);
            }
            if want > 0 && running >= want as usize && app.updated_height >= height {
                if let Some(why) = app.shortfall.get("all") {
                    eprintln!("warning: {why}");
                }
                wait_routed(api, &app, deadline, started).await?;
                break;
            }
            if Instant::now() >= deadline {
                let mut why: Vec<String> = app.shortfall.iter().map(|(r, s)| format!("{r}: {s}")).collect();
                why.extend(app.unreachable.iter().map(|(r, e)| format!("{r}: not reachable ({e})")));
                anyhow::bail!(
                    "timed out with {running}/{want} running{}",
                    if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
                );
            }
        } else {
            anyhow::ensure!(Instant::now() < deadline, "timed out: the app is on chain but no shard shows it yet");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ready in {:.1}s", started.elapsed().as_secs_f64());
    if !domains.is_empty() {
        report_domains(api, &name, height, deadline.min(Instant::now() + DOMAIN_CHECK_WAIT)).await?;
    }
    println!("{url}");
    Ok(())
}

/// How long a deploy waits for the control plane's first lookup of its new domains.
const DOMAIN_CHECK_WAIT: Duration = Duration::from_secs(10);

/// Says where each custom domain of `name` (on chain at `height`) stands, and for one that is
/// not proven, the record that proves it; waits until `until` for the first lookups.
async fn report_domains(api: &Client, name: &str, height: u64, until: Instant) -> anyhow::Result<()> {
    let app = loop {
        let app = match api.app(name).await {
            Ok(app) => Some(app),
            Err(e) if e.is_not_found() || e.is_unreachable() => None,
            Err(e) => return Err(e.into()),
        };
        let checked = app.as_ref().is_some_and(|a| {
            a.updated_height >= height && a.domains.iter().all(|d| d.state != model::domains::DomainState::Unchecked)
        });
        if checked || Instant::now() >= until {
            break app;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for d in app.iter().flat_map(|a| &a.domains) {
        eprintln!("{}", describe_domain(d));
    }
    Ok(())
}

/// One line on where a custom domain stands, with the record to add when it is not proven.
fn describe_domain(d: &model::domains::DomainView) -> String {
    use model::domains::DomainState;
    let add = format!("add a DNS TXT record {} with the value {}", d.record, d.value);
    let why = d.message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default();
    match d.state {
        DomainState::Serving => format!("domain {}: proven by {}, served", d.domain, d.record),
        DomainState::Outranked => format!(
            "domain {}: proven, but served for `{}`, whose claim is older",
            d.domain,
            d.served_by.as_deref().unwrap_or("another app")
        ),
        DomainState::Pending => format!("domain {} waits for verification{why}: {add}", d.domain),
        DomainState::Unchecked => format!("domain {} waits for verification (not looked up yet): {add}", d.domain),
    }
}

/// Waits until every gateway that follows a region where `app` runs holds a feed version that
/// routes the instances `app` shows running, so that `--wait` never returns while a client could
/// still be sent elsewhere (or get a 404).
async fn wait_routed(api: &Client, app: &AppView, deadline: Instant, started: Instant) -> anyhow::Result<()> {
    let regions: std::collections::BTreeSet<&str> = app
        .placements
        .iter()
        .filter(|p| p.state == model::api::InstanceState::Running)
        .map(|p| p.region.as_str())
        .collect();
    // The version each region's feed had when its instances were seen running; a region whose
    // leader did not answer for itself gets its target from a later view.
    let mut targets: Vec<(String, Option<u64>)> =
        regions.iter().map(|r| (r.to_string(), app.routing.get(*r).map(|x| x.feed_version))).collect();
    let mut last_behind = None;
    loop {
        let now = match api.app(&app.name).await {
            Ok(now) => now,
            // A passing failure (an election, say): ask again until the deadline.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let (mut behind, mut unfollowed, mut gateways) = (Vec::new(), Vec::new(), std::collections::BTreeSet::new());
        for (region, target) in targets.iter_mut() {
            let routing = now.routing.get(region.as_str());
            if target.is_none() {
                *target = routing.map(|r| r.feed_version);
            }
            match (routing, target) {
                // A new leader that may not have heard from every gateway yet.
                (Some(r), _) if !r.complete => behind.push(format!("region {region}'s gateways (new leader)")),
                (Some(r), _) if r.gateways.is_empty() => unfollowed.push(region.as_str()),
                (Some(r), Some(target)) => {
                    gateways.extend(r.gateways.iter().map(|g| g.id.clone()));
                    behind.extend(r.behind(*target).into_iter().map(|g| format!("{} ({region})", g.id)));
                }
                // The region's leader did not answer for itself: ask again.
                _ => behind.push(format!("region {region}'s leader")),
            }
        }
        if behind.is_empty() {
            if !unfollowed.is_empty() {
                eprintln!("note: no gateway follows {}; not waiting for routes there", unfollowed.join(", "));
            }
            if !gateways.is_empty() {
                eprintln!("routed by {} gateway(s) ({:.1}s)", gateways.len(), started.elapsed().as_secs_f64());
            }
            return Ok(());
        }
        if last_behind.as_ref() != Some(&behind) {
            eprintln!("waiting for {} to route it", behind.join(", "));
            last_behind = Some(behind.clone());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out: every instance runs, but {} do not route it yet",
            behind.join(", ")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scale(cli: &Cli, api: &Client, name: &str, instances: u32) -> anyhow::Result<()> {
    let (key, _) = keys::load(cli.key.as_ref())?;
    let app = api.app(name).await?;
    let spec = AppSpec {
        network: app.network.clone(),
        name: app.name.clone(),
        description: app.description.clone(),
        instances,
        geolocation: app
            .geolocation
            .iter()
            .map(|g| model::spec::GeoRule::parse(g).map_err(|e| anyhow::anyhow!("{e}")))
            .collect::<Result<_, _>>()?,
        expire: u32::try_from(app.expires_height.saturating_sub(app.updated_height))
            .unwrap_or(model::spec::DEFAULT_EXPIRE_BLOCKS)
            .max(1),
        components: app.components.clone(),
    };
    spec.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let payment = model::price::app_price(&spec);
    let resp = sign_and_submit(api, &key, Tx::AppUpdate { spec, payment }, false).await?;
    let height = wait_included(api, &resp.tx_id, Instant::now() + Duration::from_secs(60)).await?;
    eprintln!("`{name}` scaled to {instances} in block {height}, paying {} FLUX", format_flux(payment));
    Ok(())
}

async fn list(cli: &Cli, api: &Client) -> anyhow::Result<()> {
    let apps = api.apps().await?;
    if cli.output == Output::Json {
        return print_json(&apps);
    }
    let mut t = Table::new();
    t.set_header(["name", "instances", "running", "regions", "expires", "url"]);
    for a in &apps {
        let regions: Vec<String> = a.quotas.iter().map(|(r, n)| format!("{r}:{n}")).collect();
        t.add_row([
            a.name.clone(),
            a.instances.to_string(),
            a.running().to_string(),
            regions.join(" "),
            a.expires_height.to_string(),
            format!("http://{}.app.{}/", a.name, cli.gateway),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// Reads each instance's logs from the node that runs it, signed with the owner's key: all of
/// them in time order, or (`--follow`) as they come, each line prefixed with its instance and
/// component.
async fn logs(
    cli: &Cli,
    api: &Client,
    name: &str,
    only: Option<&str>,
    follow: bool,
    since: Option<Duration>,
    tail: Option<usize>,
) -> anyhow::Result<()> {
    let (key, _) = keys::load(cli.key.as_ref())?;
    let app = api.app(name).await.with_context(|| format!("looking up `{name}`"))?;
    anyhow::ensure!(
        app.owner == key.public(),
        "`{name}` is owned by {}; only its owner can read its logs (this key is {})",
        app.owner,
        key.public()
    );
    let instances: Vec<&model::api::InstanceView> =
        app.placements.iter().filter(|p| only.is_none_or(|id| p.id == id)).collect();
    if let Some(id) = only {
        anyhow::ensure!(!instances.is_empty(), "`{name}` has no instance {id} (see `fluxctl app status {name}`)");
    }
    anyhow::ensure!(!instances.is_empty(), "`{name}` has no instance placed yet");
    let nodes = api.nodes().await.context("listing the nodes")?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let since_ms = since.map_or(0, |d| now_ms.saturating_sub(d.as_millis() as u64));
    let http = reqwest::Client::builder().no_proxy().build()?;
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel::<model::api::LogEntry>(1024);
    let mut readers = Vec::new();
    for p in instances {
        let Some(node_api) = nodes.iter().find(|n| n.id == p.node).and_then(|n| n.api.clone()) else {
            eprintln!("{}: node {} has not said where its API is (is it up?)", p.id, p.node);
            continue;
        };
        let mut path = format!("{}?since_ms={since_ms}&follow={follow}", client::paths::node_logs(&p.id));
        if let Some(n) = tail {
            path.push_str(&format!("&tail={n}"));
        }
        // Signed as sent: the node checks the signature over this path and query.
        let request = model::api::LogsRequest::sign(&path, now_ms, &key);
        let url = format!("http://{node_api}{path}");
        let (http, tx, id) = (http.clone(), lines_tx.clone(), p.id.clone());
        readers.push(tokio::spawn(async move {
            let sent = http
                .get(&url)
                .header(model::api::LogsRequest::OWNER_HEADER, request.owner.0.as_str())
                .header(model::api::LogsRequest::AT_HEADER, request.at_ms.to_string())
                .header(model::api::LogsRequest::NONCE_HEADER, request.nonce.as_str())
                .header(model::api::LogsRequest::SIGNATURE_HEADER, request.signature.as_str())
                .send()
                .await;
            let mut resp = match sent {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    let why = serde_json::from_str::<model::api::ErrorBody>(&text)
                        .map_or_else(|_| text.trim().to_string(), |e| e.error.message);
                    eprintln!("{id}: the node answered {status}: {why}");
                    return;
                }
                Err(e) => {
                    eprintln!("{id}: cannot reach its node at {node_api}: {e}");
                    return;
                }
            };
            let mut pending = Vec::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(entry) = serde_json::from_slice::<model::api::LogEntry>(&line)
                        && tx.send(entry).await.is_err()
                    {
                        return;
                    }
                }
            }
        }));
    }
    drop(lines_tx);
    let print = |e: &model::api::LogEntry| {
        if cli.output == Output::Json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            println!("{} {} | {}", e.instance, e.component, e.text);
        }
    };
    if follow {
        while let Some(entry) = lines_rx.recv().await {
            print(&entry);
        }
    } else {
        let mut all = Vec::new();
        while let Some(entry) = lines_rx.recv().await {
            all.push(entry);
        }
        all.sort_by_key(|e| e.at_ms);
        all.iter().for_each(print);
    }
    for r in readers {
        let _ = r.await;
    }
    Ok(())
}

/// `3 restarts, last exit 137 (OOM-killed), next start in 8 s`: a crash loop is never silent.
fn describe_run(run: &model::api::RunState) -> String {
    let mut parts = vec![format!("{} restart(s)", run.restarts)];
    if let Some(code) = run.last_exit_code {
        let oom = if run.oom_killed { " (OOM-killed)" } else { "" };
        parts.push(format!("last exit {code}{oom}"));
    }
    if let Some(ms) = run.backoff_ms {
        parts.push(format!("backing off {} s", ms / 1000));
    }
    parts.join(", ")
}

async fn status(cli: &Cli, api: &Client, name: &str) -> anyhow::Result<()> {
    let app = api.app(name).await?;
    if cli.output == Output::Json {
        return print_json(&app);
    }
    println!(
        "{} (owner {}…), {} instance(s) wanted, registered in block {}, expires at {}",
        app.name,
        short(&app.owner.0, 12),
        app.instances,
        app.registered_height,
        app.expires_height
    );
    let mut t = Table::new();
    let restarts = app.placements.iter().any(|p| !p.runs.is_empty());
    let mut header = vec!["instance", "region", "state", "endpoints"];
    if restarts {
        header.push("restarts");
    }
    header.push("message");
    t.set_header(header);
    for p in &app.placements {
        let eps: Vec<String> = p.endpoints.iter().map(|(c, a)| format!("{c}={a}")).collect();
        let mut row = vec![p.id.clone(), p.region.clone(), format!("{:?}", p.state).to_lowercase(), eps.join(" ")];
        if restarts {
            row.push(
                p.runs.iter().map(|(c, run)| format!("{c}: {}", describe_run(run))).collect::<Vec<_>>().join("\n"),
            );
        }
        let mut message = p.message.clone().unwrap_or_default();
        if !p.ejected_by.is_empty() {
            if !message.is_empty() {
                message.push('\n');
            }
            message.push_str(&format!("ejected by gateway {}", p.ejected_by.join(", ")));
        }
        row.push(message);
        t.add_row(row);
    }
    println!("{t}");
    for (region, why) in &app.shortfall {
        println!("shortfall in {region}: {why}");
    }
    for (region, why) in &app.unreachable {
        println!("region {region} could not be asked: {why}");
    }
    let quotas: Vec<String> = app.quotas.iter().map(|(r, q)| format!("{r} {q}")).collect();
    println!("quotas: {}", if quotas.is_empty() { "none".to_string() } else { quotas.join(", ") });
    if !app.secrets.is_empty() {
        println!("secrets: {} (values are never shown)", app.secrets.join(", "));
    }
    for d in &app.domains {
        println!("{}", describe_domain(d));
    }
    for (region, routing) in &app.routing {
        let gateways: Vec<String> = routing
            .gateways
            .iter()
            .map(|g| {
                let lag = if g.version < routing.feed_version { " (behind)" } else { "" };
                format!("{}{lag}", g.id)
            })
            .collect();
        println!(
            "gateways following {region}: {}",
            if gateways.is_empty() { "none".to_string() } else { gateways.join(", ") }
        );
    }
    Ok(())
}

async fn rm(cli: &Cli, api: &Client, name: &str) -> anyhow::Result<()> {
    let (key, _) = keys::load(cli.key.as_ref())?;
    let resp = sign_and_submit(api, &key, Tx::AppRemove { name: name.to_string() }, false).await?;
    let height = wait_included(api, &resp.tx_id, Instant::now() + Duration::from_secs(60)).await?;
    eprintln!("removed `{name}` in block {height}");
    Ok(())
}
