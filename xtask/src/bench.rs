//! `cargo xtask bench steering`.
use anyhow::{bail, Result};

pub fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("steering") | None => steering(),
        Some(other) => bail!("unknown benchmark {other:?}; available: steering"),
    }
}

fn steering() -> Result<()> {
    bail!("not yet implemented")
}
