//! The OpenAPI document served at `/v1/openapi.json`.

use serde_json::{Value, json};

fn op(summary: &str, ok: &str) -> Value {
    json!({
        "summary": summary,
        "responses": {
            "200": { "description": ok },
            "4XX": { "description": "bad request", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
        }
    })
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": { "title": "fluxplane control plane", "version": env!("CARGO_PKG_VERSION") },
        "paths": {
            "/v1/status": { "get": op("Chain tip and the state of every regional shard", "StatusView") },
            "/v1/regions": { "get": op("The region directory from the cached chain state", "RegionView[]") },
            "/v1/apps": { "get": op("Registered apps with placements", "AppView[]") },
            "/v1/apps/{name}": { "get": op("One app: quotas, placements, instance states, shortfall, and its custom domains (`domains`: DomainView[], as the answering region's shard sees them)", "AppView") },
            "/v1/apps/{name}/secrets": { "post": op("Set an app's secrets in this region: values sealed to GET /v1/secrets-key, signed by the owner (SecretsUpdate); answers names only", "SecretsView") },
            "/v1/secrets-key": { "get": op("The X25519 key this region's secrets are sealed to", "SecretsKeyView") },
            "/v1/app-checks": { "post": op("What deploying a spec (chain form) would do: price, quotas, feasibility, modules not uploaded; nothing is submitted", "AppCheck") },
            "/v1/nodes": { "get": op("Nodes with liveness, load and free capacity", "NodeView[]") },
            "/v1/wallets/{address}": { "get": op("Balance, last nonce and next nonce of an address", "WalletView") },
            "/v1/transactions": { "post": op("Submit a signed transaction (app register/update/remove, transfer, node start)", "SubmitTxResponse") },
            "/v1/transactions/{id}": { "get": op("Pending, included or rejected", "TxStatus") },
            "/v1/chain/blocks/{height}": { "get": op("A block", "Block") },
            "/v1/blobs/{hash}": {
                "put": op("Upload a module; the body must hash (blake3) to {hash} and be a valid WebAssembly component", "204 stored"),
                "get": op("Download a module", "bytes")
            },
            "/v1/agent/heartbeat": { "post": op("Node agent heartbeat, signed with the node key; returns assignments", "Assignments") },
            "/v1/routes/{region}": { "get": op("Routing feed; ?after=V&wait_ms=N long-polls for a newer version; a gateway adds ?gateway=ID (the version it holds) and &ejected=APP@NODE,... (instances it has ejected); `domains` maps each custom domain served for an app of the region to the claim it is served for ({app, since})", "RouteFeed") },
            "/v1/events/{region}": { "get": op("The region's event log after ?after=SEQ, oldest first; ?wait_ms=N long-polls for one", "EventPage") },
            "/v1/shards/{region}/capacity": { "get": op("The region's open nodes and apps short of their base quota, from its leader; other regions spill to cover them", "RegionReport") }
        },
        "components": {
            "schemas": {
                "DomainView": {
                    "type": "object",
                    "description": "One custom domain of an app. It is served for the app only once a DNS TXT record at `record` holds `value` (the owner's address, lowercase hex of its ed25519 key); of proven claims the oldest (`since`, the chain height of the first claim) wins.",
                    "required": ["domain", "state", "record", "value", "since"],
                    "properties": {
                        "domain": { "type": "string" },
                        "state": { "type": "string", "enum": ["unchecked", "pending", "serving", "outranked"] },
                        "record": { "type": "string", "example": "_fluxplane.shop.example.com" },
                        "value": { "type": "string" },
                        "since": { "type": "integer" },
                        "served_by": { "type": "string", "description": "the app the domain is served for, when another" },
                        "message": { "type": "string", "description": "what the last lookup found, when it did not prove the claim" }
                    }
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": { "type": "string" },
                                "message": { "type": "string" },
                                "fields": { "type": "array", "items": { "type": "object", "properties": { "path": { "type": "string" }, "message": { "type": "string" } } } }
                            }
                        }
                    }
                }
            }
        }
    })
}
