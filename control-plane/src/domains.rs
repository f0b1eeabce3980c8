//! Proving custom domains (see `model::domains`): while this replica leads, it looks up the
//! TXT record `_fluxplane.<domain>` of every domain an app on chain claims, and commits what
//! changed through Raft (`Command::SetDomainChecks`), so every replica, a new leader and the
//! routing feed agree on it.
//!
//! A domain is looked up soon after a new claim on it (within a tick), then every `recheck`;
//! at most [`MAX_PER_TICK`] lookups start a tick, so the DNS server sees a bounded rate
//! whatever the number of domains. Nothing is cached beyond that: each lookup asks the server.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use model::AppName;
use model::command::Command;
use model::domains::{DomainCheck, proves, txt_name};
use model::keys::PublicKeyHex;
use tokio::sync::watch;

use crate::Shard;
use crate::state::ShardState;

/// How often the leader looks for domains due a lookup.
const TICK: Duration = Duration::from_secs(1);
/// Most lookups started in one tick.
pub const MAX_PER_TICK: usize = 16;
/// How long one lookup may take (the resolver's own timeout; one attempt over UDP, then TCP
/// for a truncated answer).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// A TXT lookup's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtAnswer {
    /// The record's values (each value's strings joined, as RFC 7208 reads them).
    Found(Vec<String>),
    /// The name does not exist, or has no TXT record: a definite "not proven".
    Missing,
    /// No answer (timeout, refused, SERVFAIL): says nothing about the domain.
    Failed(String),
}

/// Looks up TXT records through one resolver.
pub struct DomainResolver {
    /// The resolver, or why there is none (every lookup then fails with it).
    resolver: Result<TokioResolver, String>,
    /// What it asks, for logs.
    pub describe: String,
}

impl DomainResolver {
    /// A resolver that asks `server` (UDP, and TCP for truncated answers), or, with `None`,
    /// the name servers of `/etc/resolv.conf`. It caches nothing. A system configuration that
    /// cannot be read leaves a resolver whose lookups fail saying why (the control plane runs
    /// on; custom domains wait).
    pub fn new(server: Option<SocketAddr>) -> DomainResolver {
        let provider = TokioRuntimeProvider::default();
        let (builder, describe) = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                let config = ResolverConfig::from_name_servers(vec![server]);
                (Ok(TokioResolver::builder_with_config(config, provider)), format!("the DNS server at {addr}"))
            }
            None => (
                TokioResolver::builder(provider)
                    .map_err(|e| format!("the system's resolver configuration (/etc/resolv.conf) is unusable: {e}")),
                "the system's resolver (/etc/resolv.conf)".to_string(),
            ),
        };
        let resolver = builder.and_then(|mut builder| {
            let options = builder.options_mut();
            options.cache_size = 0;
            options.timeout = LOOKUP_TIMEOUT;
            options.attempts = 1;
            options.use_hosts_file = ResolveHosts::Never;
            // Names are looked up as given (fully qualified): no search domains.
            options.ndots = 0;
            builder.build().map_err(|e| format!("building the DNS resolver: {e}"))
        });
        if let Err(e) = &resolver {
            tracing::error!("{e}: custom domains cannot be proven; give --dns ADDR:PORT");
        }
        DomainResolver { resolver, describe }
    }

    /// The TXT values at `name`.
    pub async fn txt(&self, name: &str) -> TxtAnswer {
        let resolver = match &self.resolver {
            Ok(r) => r,
            Err(e) => return TxtAnswer::Failed(e.clone()),
        };
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let lookup = resolver.txt_lookup(fqdn.as_str());
        match tokio::time::timeout(LOOKUP_TIMEOUT * 2, lookup).await {
            Err(_) => TxtAnswer::Failed(format!("no answer from {} within {:?}", self.describe, LOOKUP_TIMEOUT * 2)),
            Ok(Ok(found)) => TxtAnswer::Found(
                found
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(txt.to_string()),
                        _ => None,
                    })
                    .collect(),
            ),
            Ok(Err(e)) if e.is_no_records_found() => TxtAnswer::Missing,
            Ok(Err(e)) => TxtAnswer::Failed(format!("{} did not answer: {e}", self.describe)),
        }
    }
}

/// One app's claim on a domain, as the chain holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claim {
    /// The app.
    pub app: AppName,
    /// The chain height at which it first claimed the domain.
    pub since: u64,
    /// Its owner, whose address the TXT record must hold.
    pub owner: PublicKeyHex,
}

/// Every claim on chain, by domain.
pub fn claims(state: &ShardState) -> BTreeMap<String, Vec<Claim>> {
    let mut by_domain: BTreeMap<String, Vec<Claim>> = BTreeMap::new();
    for (name, app) in &state.chain.apps {
        for (domain, since) in app.claims() {
            by_domain.entry(domain).or_default().push(Claim { app: name.clone(), since, owner: app.owner.clone() });
        }
    }
    by_domain
}

/// The checks to commit after a lookup of `domain` found `answer`: one for each claim whose
/// stored verdict differs. A failed lookup keeps a claim's verdict (a DNS outage does not take
/// a domain down), only noting why it could not be checked again.
pub fn decide(state: &ShardState, domain: &str, claims: &[Claim], answer: &TxtAnswer, at_ms: u64) -> Vec<DomainCheck> {
    let record = txt_name(domain);
    let mut out = Vec::new();
    for claim in claims {
        let stored =
            state.domain_check(domain, &claim.app).filter(|c| c.since == claim.since && c.owner == claim.owner);
        let (verified, message) = match answer {
            TxtAnswer::Found(values) if proves(values, &claim.owner) => (true, None),
            TxtAnswer::Found(values) => (
                false,
                Some(format!(
                    "the TXT record {record} holds {}, not the owner's address",
                    values
                        .iter()
                        .map(|v| format!("\"{}\"", v.chars().take(80).collect::<String>()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            ),
            TxtAnswer::Missing => (false, Some(format!("no TXT record at {record}"))),
            TxtAnswer::Failed(why) => (stored.is_some_and(|c| c.verified), Some(format!("looking up {record}: {why}"))),
        };
        if stored.is_some_and(|c| c.verified == verified && c.message == message) {
            continue;
        }
        out.push(DomainCheck {
            domain: domain.to_string(),
            app: claim.app.clone(),
            owner: claim.owner.clone(),
            since: claim.since,
            verified,
            message,
            at_ms,
        });
    }
    out
}

/// The domains to look up now, at most `max`: first those with a claim no lookup of this
/// leader has seen yet, then those last looked up longest ago, once `recheck` has passed.
pub fn due(
    claims: &BTreeMap<String, Vec<Claim>>,
    looked: &HashMap<String, (Instant, Vec<Claim>)>,
    now: Instant,
    recheck: Duration,
    max: usize,
) -> Vec<String> {
    let mut due: Vec<(Option<Instant>, &String)> = claims
        .iter()
        .filter_map(|(domain, claims)| match looked.get(domain) {
            Some((_, seen)) if seen != claims => Some((None, domain)),
            Some((at, _)) if now.duration_since(*at) >= recheck => Some((Some(*at), domain)),
            Some(_) => None,
            None => Some((None, domain)),
        })
        .collect();
    due.sort();
    due.into_iter().take(max).map(|(_, d)| d.clone()).collect()
}

/// While this replica leads, proves the claimed domains (see the module's doc); returns when
/// `stop` turns true.
pub async fn verify_domains(
    shard: Arc<Shard>,
    resolver: Arc<DomainResolver>,
    recheck: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // Per domain: when this leader last looked it up, and the claims it decided then.
    let mut looked: HashMap<String, (Instant, Vec<Claim>)> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if !shard.is_leader() {
            // A later term starts over: its verdicts are in the log, its timers are not.
            looked.clear();
            continue;
        }
        let claims = shard.read(claims);
        looked.retain(|domain, _| claims.contains_key(domain));
        let now = Instant::now();
        let domains = due(&claims, &looked, now, recheck, MAX_PER_TICK);
        if domains.is_empty() {
            continue;
        }
        let lookups = domains.iter().map(|domain| {
            let resolver = resolver.clone();
            async move { resolver.txt(&txt_name(domain)).await }
        });
        let answers = join_all(lookups).await;
        let at_ms = chain::now_ms();
        let mut checks = Vec::new();
        shard.read(|s| {
            for (domain, answer) in domains.iter().zip(&answers) {
                let of_domain = claims.get(domain).map(Vec::as_slice).unwrap_or_default();
                checks.extend(decide(s, domain, of_domain, answer, at_ms));
            }
        });
        for (domain, answer) in domains.iter().zip(answers) {
            if let TxtAnswer::Failed(why) = &answer {
                tracing::warn!(region = %shard.region, %domain, "custom domain not checked: {why}");
            }
            looked.insert(domain.clone(), (now, claims.get(domain).cloned().unwrap_or_default()));
        }
        if checks.is_empty() {
            continue;
        }
        for c in &checks {
            tracing::info!(region = %shard.region, domain = %c.domain, app = %c.app, verified = c.verified,
                message = c.message.as_deref().unwrap_or(""), "custom domain check changed");
        }
        if let Err(e) = shard.propose(Command::SetDomainChecks { checks }).await {
            tracing::warn!(region = %shard.region, "custom domain checks not committed: {e}; looking again");
            // Looked up again next tick, so that the verdict is not lost.
            for domain in &domains {
                looked.remove(domain);
            }
        }
    }
}

#[cfg(test)]
mod tests;
