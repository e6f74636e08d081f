//! `cargo xtask soak`: WHIP/WHEP churn with media, then reconciliation.
use anyhow::{bail, Result};

pub fn soak(_args: &[String]) -> Result<()> {
    bail!("soak: not implemented yet")
}
