use model::command::{Command, CommandResult};
use model::keys::Keypair;

use super::*;

/// A spec of one container whose port claims `domain`.
fn spec(name: &str, domain: &str) -> model::AppSpec {
    let toml = format!(
        "name = \"{name}\"\n[[component]]\nname = \"web\"\nimage = \"busybox:1\"\nports = [{{ container = 80, public = \
         8080, domain = \"{domain}\" }}]\n"
    );
    model::AppSpec::from_toml(&toml).expect("spec")
}

/// A state with apps registered as (name, domain, owner, height).
fn state(apps: &[(&str, &str, &Keypair, u64)]) -> ShardState {
    let mut state = ShardState::new("eu");
    for (name, domain, owner, height) in apps {
        let spec = spec(name, domain);
        let record = model::chain::AppRecord {
            domains: spec.domains().into_iter().map(|d| (d, *height)).collect(),
            spec,
            owner: owner.public(),
            registered_height: *height,
            updated_height: *height,
            expires_height: 1000,
        };
        state.chain.apps.insert(name.to_string(), record);
    }
    state
}

fn commit(state: &mut ShardState, checks: Vec<DomainCheck>) -> CommandResult {
    state.apply(&Command::SetDomainChecks { checks })
}

#[test]
fn only_the_owners_record_verifies_and_the_older_proven_claim_keeps_the_domain() {
    let (owner, stranger) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    let mut state = state(&[("shop", "Shop.Example.com", &owner, 5), ("thief", "shop.example.com", &stranger, 9)]);
    let all = claims(&state);
    let on_shop = &all["shop.example.com"];
    assert_eq!(on_shop.len(), 2);

    // No record yet: neither claim is proven, so the domain is served for nobody.
    let checks = decide(&state, "shop.example.com", on_shop, &TxtAnswer::Missing, 1);
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|c| !c.verified), "{checks:?}");
    assert_eq!(checks[0].message.as_deref(), Some("no TXT record at _fluxplane.shop.example.com"));
    assert_eq!(commit(&mut state, checks), CommandResult::Applied);
    assert_eq!(state.domain_winner("shop.example.com"), None);
    // The same answer again changes nothing, so nothing is proposed.
    assert!(decide(&state, "shop.example.com", on_shop, &TxtAnswer::Missing, 2).is_empty());

    // The owner's record: the owner's claim is proven and served.
    let record = TxtAnswer::Found(vec![owner.public().0.to_uppercase()]);
    let checks = decide(&state, "shop.example.com", on_shop, &record, 3);
    assert!(checks[0].verified && checks[0].app == "shop", "{checks:?}");
    // The stranger's claim stays unproven, now saying whose address the record holds.
    assert!(
        !checks[1].verified && checks[1].message.as_deref().is_some_and(|m| m.ends_with("not the owner's address"))
    );
    assert_eq!(commit(&mut state, checks), CommandResult::Applied);
    let winner = state.domain_winner("shop.example.com").expect("served");
    assert_eq!((winner.app.as_str(), winner.since), ("shop", 5));

    // The stranger's address added too: proven, but newer, so the owner keeps the domain.
    let both = TxtAnswer::Found(vec![owner.public().0, stranger.public().0]);
    let checks = decide(&state, "shop.example.com", on_shop, &both, 4);
    commit(&mut state, checks);
    assert!(state.domain_check("shop.example.com", "thief").is_some_and(|c| c.verified));
    assert_eq!(state.domain_winner("shop.example.com").map(|w| w.app), Some("shop".into()));

    // A DNS outage keeps the verdicts, noting why they were not checked again.
    let failed = TxtAnswer::Failed("timed out".into());
    let checks = decide(&state, "shop.example.com", on_shop, &failed, 5);
    commit(&mut state, checks);
    let kept = state.domain_check("shop.example.com", "shop").expect("kept");
    assert!(kept.verified && kept.message.as_deref().is_some_and(|m| m.contains("timed out")), "{kept:?}");
    assert_eq!(state.domain_winner("shop.example.com").map(|w| w.app), Some("shop".into()));
}

#[test]
fn checks_of_claims_the_chain_no_longer_holds_are_refused_and_forgotten() {
    let (owner, other) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    let mut state = state(&[("shop", "shop.example.com", &owner, 5)]);
    let proven = |owner: &Keypair, since| DomainCheck {
        domain: "shop.example.com".into(),
        app: "shop".into(),
        owner: owner.public(),
        since,
        verified: true,
        message: None,
        at_ms: 1,
    };
    // Another owner's, or an older claim's, check does not count.
    assert!(matches!(commit(&mut state, vec![proven(&other, 5)]), CommandResult::Skipped { .. }));
    assert!(matches!(commit(&mut state, vec![proven(&owner, 4)]), CommandResult::Skipped { .. }));
    assert_eq!(commit(&mut state, vec![proven(&owner, 5)]), CommandResult::Applied);
    assert!(state.domain_winner("shop.example.com").is_some());

    // The app is removed (as a block would): its check goes with it.
    state.chain.apps.clear();
    state.forget_stale_domain_checks();
    assert!(state.domains.is_empty());
}

#[test]
fn new_claims_are_looked_up_first_and_others_only_once_due() {
    let owner = Keypair::from_seed([1; 32]);
    let state = state(&[("a", "a.example.com", &owner, 1), ("b", "b.example.com", &owner, 2)]);
    let all = claims(&state);
    let now = Instant::now();
    let minute = Duration::from_secs(60);
    let mut looked = HashMap::new();
    assert_eq!(due(&all, &looked, now, minute, 16), ["a.example.com", "b.example.com"]);
    assert_eq!(due(&all, &looked, now, minute, 1), ["a.example.com"], "bounded");
    looked.insert("a.example.com".to_string(), (now, all["a.example.com"].clone()));
    looked.insert("b.example.com".to_string(), (now, all["b.example.com"].clone()));
    assert!(due(&all, &looked, now + Duration::from_secs(30), minute, 16).is_empty());
    assert_eq!(due(&all, &looked, now + minute, minute, 16).len(), 2);
    // A new claim on a domain looked up a moment ago: at once.
    let mut more = all.clone();
    more.get_mut("a.example.com").expect("a").push(Claim { app: "c".into(), since: 3, owner: owner.public() });
    assert_eq!(due(&more, &looked, now, minute, 16), ["a.example.com"]);
}
