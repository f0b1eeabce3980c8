//! Every path of the API, once. Servers route on the `*_ROUTE` patterns; clients build paths
//! with the functions, which percent-encode what the caller gives.

/// Cloud status: chain tip and every region's shard.
pub const STATUS: &str = "/v1/status";
/// The OpenAPI document.
pub const OPENAPI: &str = "/v1/openapi.json";
/// The region directory.
pub const REGIONS: &str = "/v1/regions";
/// Every app.
pub const APPS: &str = "/v1/apps";
/// One app.
pub const APP_ROUTE: &str = "/v1/apps/{name}";
/// What deploying a spec would do (price, quotas, feasibility), without doing it.
pub const APP_CHECKS: &str = "/v1/app-checks";
/// `POST`: set an app's secrets in the answering region (`SecretsUpdate`).
pub const APP_SECRETS_ROUTE: &str = "/v1/apps/{name}/secrets";
/// `GET`: the key the answering region's secrets are sealed to.
pub const SECRETS_KEY: &str = "/v1/secrets-key";
/// Every node.
pub const NODES: &str = "/v1/nodes";
/// One wallet.
pub const WALLET_ROUTE: &str = "/v1/wallets/{address}";
/// Submit a transaction.
pub const TRANSACTIONS: &str = "/v1/transactions";
/// One transaction's fate.
pub const TRANSACTION_ROUTE: &str = "/v1/transactions/{id}";
/// The chain tip; `?after=H&wait_ms=N` long-polls for a newer one.
pub const CHAIN_TIP: &str = "/v1/chain/tip";
/// One block.
pub const BLOCK_ROUTE: &str = "/v1/chain/blocks/{height}";
/// One module.
pub const BLOB_ROUTE: &str = "/v1/blobs/{hash}";
/// Whether a blob is stored, and who paid for it.
pub const BLOB_STATUS_ROUTE: &str = "/v1/blobs/{hash}/status";
/// Node agent heartbeats.
pub const HEARTBEAT: &str = "/v1/agent/heartbeat";
/// A region's routing feed.
pub const ROUTES_ROUTE: &str = "/v1/routes/{region}";
/// A region's event log (`?after=SEQ`).
pub const EVENTS_ROUTE: &str = "/v1/events/{region}";
/// A shard's membership and replica states.
pub const SHARD_ROUTE: &str = "/v1/shards/{region}";
/// The answering replica's own Raft state.
pub const SHARD_REPLICA_ROUTE: &str = "/v1/shards/{region}/replica";
/// The answering replica's identity.
pub const SHARD_IDENTITY_ROUTE: &str = "/v1/shards/{region}/identity";
/// The region's capacity, as its leader sees it (for other regions' shards).
pub const SHARD_CAPACITY_ROUTE: &str = "/v1/shards/{region}/capacity";
/// Initialize a shard from the answering replica's peers.
pub const SHARD_INIT_ROUTE: &str = "/v1/shards/{region}/init";
/// Add a learner.
pub const SHARD_LEARNERS_ROUTE: &str = "/v1/shards/{region}/learners";
/// Make a learner a voter.
pub const SHARD_PROMOTE_ROUTE: &str = "/v1/shards/{region}/promote";
/// Remove a member.
pub const SHARD_REMOVE_ROUTE: &str = "/v1/shards/{region}/remove";
/// Hand leadership to another voter.
pub const SHARD_TRANSFER_ROUTE: &str = "/v1/shards/{region}/transfer-leader";
/// Cordon a node: place nothing new on it.
pub const NODE_CORDON_ROUTE: &str = "/v1/nodes/{id}/cordon";
/// Uncordon a node.
pub const NODE_UNCORDON_ROUTE: &str = "/v1/nodes/{id}/uncordon";
/// Raft RPCs between replicas: `append`, `vote`, `snapshot`, `read-index`, `timeout-now`.
pub const RAFT_ROUTE: &str = "/raft/{region}/{rpc}";
/// On a node's API: an instance's output, to its app's owner.
pub const NODE_LOGS_ROUTE: &str = "/v1/logs/{instance}";
/// On a node's API: the answer to the shard leader's address challenge.
pub const NODE_ADDRESS_PROOF: &str = "/v1/address-proof";
/// On a node's API: whether it serves.
pub const NODE_HEALTHZ: &str = "/healthz";

/// Percent-encodes one path segment, so that a name from a user can never change the path.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // `.` and `..` alone would be resolved away by URL normalization.
    if out == "." || out == ".." { out.replace('.', "%2E") } else { out }
}

fn fill(route: &str, args: &[(&str, &str)]) -> String {
    let mut path = route.to_string();
    for (name, value) in args {
        path = path.replace(&format!("{{{name}}}"), &segment(value));
    }
    path
}

/// `/v1/apps/{name}`.
pub fn app(name: &str) -> String {
    fill(APP_ROUTE, &[("name", name)])
}
/// `/v1/apps/{name}/secrets`.
pub fn app_secrets(name: &str) -> String {
    fill(APP_SECRETS_ROUTE, &[("name", name)])
}
/// `/v1/wallets/{address}`.
pub fn wallet(address: &str) -> String {
    fill(WALLET_ROUTE, &[("address", address)])
}
/// `/v1/transactions/{id}`.
pub fn transaction(id: &str) -> String {
    fill(TRANSACTION_ROUTE, &[("id", id)])
}
/// `/v1/chain/blocks/{height}`.
pub fn block(height: u64) -> String {
    fill(BLOCK_ROUTE, &[("height", &height.to_string())])
}
/// `/v1/blobs/{hash}`.
pub fn blob(hash: &str) -> String {
    fill(BLOB_ROUTE, &[("hash", hash)])
}
/// `/v1/blobs/{hash}/status`.
pub fn blob_status(hash: &str) -> String {
    fill(BLOB_STATUS_ROUTE, &[("hash", hash)])
}
/// `/v1/events/{region}`.
pub fn events(region: &str) -> String {
    fill(EVENTS_ROUTE, &[("region", region)])
}

/// `/v1/routes/{region}`.
pub fn routes(region: &str) -> String {
    fill(ROUTES_ROUTE, &[("region", region)])
}
/// `/v1/shards/{region}` and its sub-resources.
pub fn shard(route: &str, region: &str) -> String {
    fill(route, &[("region", region)])
}
/// `/v1/nodes/{id}/cordon` and `/uncordon`.
pub fn node(route: &str, id: &str) -> String {
    fill(route, &[("id", id)])
}
/// `/v1/logs/{instance}` on a node's API.
pub fn node_logs(instance: &str) -> String {
    fill(NODE_LOGS_ROUTE, &[("instance", instance)])
}
/// `/raft/{region}/{rpc}`.
pub fn raft(region: &str, rpc: &str) -> String {
    fill(RAFT_ROUTE, &[("region", region), ("rpc", rpc)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_cannot_escape_its_segment() {
        assert_eq!(app("hello"), "/v1/apps/hello");
        assert_eq!(app("../status"), "/v1/apps/..%2Fstatus");
        assert_eq!(app(".."), "/v1/apps/%2E%2E");
        assert_eq!(app("a b?c#d"), "/v1/apps/a%20b%3Fc%23d");
        assert_eq!(raft("eu", "append"), "/raft/eu/append");
    }
}
