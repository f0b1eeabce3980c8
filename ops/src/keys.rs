//! Wallet key files in the user's config dir (`$FLUXCTL_CONFIG_DIR`, else `<config>/fluxctl`).

use std::path::PathBuf;

use anyhow::Context;
use model::keys::Keypair;

/// The key file `fluxplane dev` writes, funded in its genesis.
pub const DEV_WALLET: &str = "dev-wallet.key";
/// A user's own key file, preferred over the dev wallet when present.
pub const WALLET: &str = "wallet.key";

/// fluxctl's config directory.
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLUXCTL_CONFIG_DIR") {
        return PathBuf::from(dir);
    }
    dirs::config_dir().unwrap_or_else(|| PathBuf::from(".")).join("fluxctl")
}

/// The key to sign with: `explicit`, else `wallet.key`, else `dev-wallet.key`.
pub fn load(explicit: Option<&PathBuf>) -> anyhow::Result<(Keypair, PathBuf)> {
    let path = match explicit {
        Some(p) => p.clone(),
        None => {
            let own = config_dir().join(WALLET);
            if own.exists() { own } else { config_dir().join(DEV_WALLET) }
        }
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading key {} (run `fluxplane dev`, which writes a funded dev wallet, or `fluxctl wallet new`)",
            path.display()
        )
    })?;
    let key = Keypair::from_secret_hex(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((key, path))
}

/// Writes a key file readable by its owner only.
pub fn write(path: &std::path::Path, key: &Keypair) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, key.secret_hex() + "\n").with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
