//! `cargo xtask fuzz`: every libFuzzer target under gateway/fuzz.
use anyhow::{bail, Result};

pub fn fuzz(_args: &[String]) -> Result<()> {
    bail!("fuzz: not implemented yet")
}
