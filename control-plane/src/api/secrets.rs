//! App secrets (see "Secrets" in `docs/architecture.md`): the region's sealing key, and owner-
//! signed updates of sealed values. Values are never in the clear here, and never leave in an
//! answer: views list names only.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use model::api::{SecretsKeyView, SecretsUpdate, SecretsView, secret_context};
use model::command::{Command, CommandResult};
use model::sealed::BoxKeypair;

use super::ledger::parse_json;
use super::{Api, ApiError};
use crate::state::MAX_APP_SECRETS as MAX_SECRETS;

type Json<T> = Result<axum::Json<T>, ApiError>;

/// Largest secret value, in bytes.
const MAX_SECRET_BYTES: usize = 4096;
/// How far an update's signing time may be from this replica's clock: bounds replays of an
/// old update to a region that never stored it.
const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// `GET /v1/secrets-key`: the region's public sealing key, made (by the leader, through Raft)
/// the first time it is asked for.
pub(super) async fn secrets_key(State(api): State<Arc<Api>>) -> Json<SecretsKeyView> {
    let public = |api: &Api| api.shard.read(|s| s.secrets_key.as_ref().map(BoxKeypair::public_hex));
    if let Some(key) = public(&api) {
        return Ok(axum::Json(SecretsKeyView { region: api.shard.region.clone(), key }));
    }
    // A follower answers not_leader and the client asks the leader; a second key is skipped.
    api.shard.propose(Command::SetSecretsKey { key: BoxKeypair::generate() }).await?;
    let key =
        public(&api).ok_or_else(|| ApiError::internal("the secrets key was committed but is not in the state"))?;
    Ok(axum::Json(SecretsKeyView { region: api.shard.region.clone(), key }))
}

/// `POST /v1/apps/{name}/secrets`: stores sealed values signed by the app's owner.
pub(super) async fn put_secrets(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Json<SecretsView> {
    let update: SecretsUpdate = parse_json(&body)?;
    if update.app != name {
        return Err(ApiError::bad_request(format!("the update is for `{}`, sent to `{name}`", update.app)));
    }
    if update.region != api.shard.region {
        return Err(ApiError::new(
            "wrong_region",
            format!("secrets sealed for region {} were sent to region {}", update.region, api.shard.region),
        ));
    }
    if update.values.len() > MAX_SECRETS || update.unset.len() > MAX_SECRETS {
        return Err(ApiError::new(
            "invalid_secret",
            format!("an update sets or removes at most {MAX_SECRETS} secrets"),
        ));
    }
    if chain::now_ms().abs_diff(update.at_ms) > MAX_SKEW_MS {
        return Err(ApiError::new(
            "invalid_secret",
            "the update was signed more than 5 minutes from this replica's clock; sign it again",
        ));
    }
    let (checked, key) = api.shard.read(|s| (s.check_secrets(&update), s.secrets_key.clone()));
    checked.map_err(|(code, why)| ApiError::new(code, why))?;
    let key = key.ok_or_else(|| {
        ApiError::new("invalid_secret", "this region has no secrets key yet: ask GET /v1/secrets-key, then seal to it")
    })?;
    for (secret, sealed) in &update.values {
        // Opened only to check it: the value goes no further than this stack frame.
        let opened = key.open(&secret_context(&update.app, secret, &update.region), sealed).map_err(|e| {
            ApiError::new(
                "invalid_secret",
                format!("secret `{secret}` does not open with region {}'s key: {e}", update.region),
            )
        })?;
        if opened.expose().len() > MAX_SECRET_BYTES {
            return Err(ApiError::new("invalid_secret", format!("secret `{secret}` is over {MAX_SECRET_BYTES} bytes")));
        }
        // The guest reads an environment variable: text, with no NUL to cut it short.
        if std::str::from_utf8(opened.expose()).is_err() || opened.expose().contains(&0) {
            return Err(ApiError::new(
                "invalid_secret",
                format!("secret `{secret}` is not UTF-8 text without NUL bytes (encode binary values, e.g. in base64)"),
            ));
        }
    }
    match api.shard.propose(Command::PutSecrets { update: update.clone() }).await? {
        // Checked above; a race (another update committed first) lands here: say which rule.
        CommandResult::Rejected { reason } => {
            let (code, message) = api.shard.read(|s| s.check_secrets(&update)).err().unwrap_or(("conflict", reason));
            return Err(ApiError::new(code, message));
        }
        _ => tracing::info!(app = %update.app, names = ?update.values.keys().collect::<Vec<_>>(), "secrets set"),
    }
    let view = api.shard.read(|s| {
        let stored = s.secrets.get(&update.app);
        SecretsView {
            app: update.app.clone(),
            region: s.region.clone(),
            names: stored.map(|v| v.values.keys().cloned().collect()).unwrap_or_default(),
            version: stored.map_or(0, |v| v.version),
        }
    });
    Ok(axum::Json(view))
}
