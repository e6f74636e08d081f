//! `cargo xtask install`: the release binary and the hardened systemd unit.
use anyhow::{bail, Result};

pub fn install(_args: &[String]) -> Result<()> {
    bail!("install: not implemented yet")
}
