//! Custom domains and how an app's owner proves one is theirs.
//!
//! An app claims a custom domain in its spec (an OCI port's `domain`). The claim counts only
//! once the owner has proven the domain: a DNS TXT record at `_fluxplane.<domain>` holding the
//! owner's address, the lowercase hex of its ed25519 public key as the chain writes it (64
//! digits; case and surrounding spaces are ignored). Each region's leader looks the records up
//! and commits what it found through its shard's Raft log ([`DomainCheck`]).
//!
//! Of the verified claims on one domain the oldest wins: the lowest chain height at which the
//! app first claimed it, then the app's name. So a later claim, verified or not, never takes a
//! domain from an app that serves it, and every shard and gateway picks the same app.

use serde::{Deserialize, Serialize};

use crate::AppName;
use crate::keys::PublicKeyHex;

/// The first label of the name whose TXT record proves a domain.
pub const TXT_LABEL: &str = "_fluxplane";

/// The name of the TXT record that proves `domain`: `_fluxplane.<domain>`.
pub fn txt_name(domain: &str) -> String {
    format!("{TXT_LABEL}.{domain}")
}

/// The form a domain is compared in: lowercase, without a trailing dot.
pub fn canonical(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Whether one of the TXT values found at [`txt_name`] names `owner`.
pub fn proves(values: &[String], owner: &PublicKeyHex) -> bool {
    values.iter().any(|v| v.trim().eq_ignore_ascii_case(&owner.0))
}

/// What a region's leader last found for one app's claim on a domain, committed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainCheck {
    /// The domain, in [`canonical`] form.
    pub domain: String,
    /// The app claiming it.
    pub app: AppName,
    /// The app's owner when it was checked; a check of another owner's claim does not count.
    pub owner: PublicKeyHex,
    /// The chain height at which the app first claimed the domain; a check of an older claim
    /// (dropped and claimed again) does not count.
    pub since: u64,
    /// Whether the TXT record named the owner.
    pub verified: bool,
    /// What the lookup found, when it did not verify (or failed to answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the leader reached this verdict, ms since the epoch.
    pub at_ms: u64,
}

/// The claim a domain is served for, as a region's routing feed carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainWinner {
    /// The app.
    pub app: AppName,
    /// The chain height at which it first claimed the domain.
    pub since: u64,
}

impl DomainWinner {
    /// Whether `self` wins over `other`: the older claim, then the app that sorts first.
    pub fn beats(&self, other: &DomainWinner) -> bool {
        (self.since, &self.app) < (other.since, &other.app)
    }
}

/// Of `claims` (app, claim height, verified), the one a domain is served for: the oldest
/// verified claim, ties broken by app name. `None` when none is verified.
pub fn winner<'a>(claims: impl IntoIterator<Item = (&'a AppName, u64, bool)>) -> Option<DomainWinner> {
    claims
        .into_iter()
        .filter(|(_, _, verified)| *verified)
        .map(|(app, since, _)| DomainWinner { app: app.clone(), since })
        .reduce(|best, next| if next.beats(&best) { next } else { best })
}

/// Where one of an app's custom domains stands (`GET /v1/apps/{name}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainState {
    /// Not looked up yet (the leader checks a new claim within seconds).
    Unchecked,
    /// Not proven: the TXT record is missing, does not name the owner, or could not be read.
    /// Not served for this app.
    Pending,
    /// Proven, and served for this app.
    Serving,
    /// Proven, but an older proven claim of another app holds the domain.
    Outranked,
}

/// One custom domain of an app, as the answering region's shard sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainView {
    /// The domain.
    pub domain: String,
    /// Where it stands.
    pub state: DomainState,
    /// The TXT record that proves it: `_fluxplane.<domain>` ...
    pub record: String,
    /// ... holding this value, the owner's address.
    pub value: String,
    /// The chain height at which the app first claimed it.
    pub since: u64,
    /// The app it is served for, when that is another app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<AppName>,
    /// What the last lookup found, when it did not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_verified_claim_wins_and_an_unverified_one_never() {
        let (a, b, c) = ("a".to_string(), "b".to_string(), "c".to_string());
        assert_eq!(winner([(&a, 5, false)]), None);
        let w = winner([(&b, 9, true), (&a, 5, false), (&c, 7, true)]);
        assert_eq!(w, Some(DomainWinner { app: c.clone(), since: 7 }));
        // Claimed in the same block: the name decides, whatever the order.
        let w = winner([(&c, 7, true), (&b, 7, true)]);
        assert_eq!(w.map(|w| w.app), Some(b.clone()));
        let w = winner([(&b, 7, true), (&c, 7, true)]);
        assert_eq!(w.map(|w| w.app), Some(b));
    }

    #[test]
    fn a_record_proves_the_owner_in_any_case() {
        let owner = PublicKeyHex("ab".repeat(32));
        assert!(proves(&["other".into(), format!(" {} ", "AB".repeat(32))], &owner));
        assert!(!proves(&["ab".into()], &owner));
        assert!(!proves(&[], &owner));
        assert_eq!(txt_name("shop.example.com"), "_fluxplane.shop.example.com");
        assert_eq!(canonical("Shop.Example.COM."), "shop.example.com");
    }
}
