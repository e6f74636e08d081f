//! `cargo xtask install [--root DIR] [--binary PATH]`: the release binary, the hardened
//! systemd unit and the system user it runs as.
//!
//! - `/usr/local/bin/roomgate` (0755), `/etc/systemd/system/roomgate.service` and
//!   `/etc/sysusers.d/roomgate.conf` (0644), all below DIR (default `/`). Each file is
//!   written next to its target and renamed over it, so a running roomgate keeps its
//!   old binary and no reader sees half a file.
//! - The user comes from the sysusers.d entry through `systemd-sysusers`, which creates it
//!   only when missing (so installing twice changes nothing); without systemd-sysusers,
//!   `useradd --system`.
//! - `--binary` installs a binary already built instead of building the release one.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::build::{run, workspace_root};

pub const UNIT: &str = "gateway/deploy/roomgate.service";
pub const SYSUSERS: &str = "gateway/deploy/roomgate.sysusers";
const USER: &str = "roomgate";

pub fn install(args: &[String]) -> Result<()> {
    let mut root = PathBuf::from("/");
    let mut binary = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--root" => root = PathBuf::from(it.next().context("--root needs a directory")?),
            "--binary" => binary = Some(PathBuf::from(it.next().context("--binary needs a path")?)),
            other => bail!("install: unknown argument {other:?}; usage: cargo xtask install [--root DIR] [--binary PATH]"),
        }
    }
    let binary = match binary {
        Some(b) => b,
        None => {
            crate::build_all(true)?;
            workspace_root().join("target/release/roomgate")
        }
    };
    install_into(&root, &binary)?;
    if root == Path::new("/") && Path::new("/run/systemd/system").is_dir() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    println!(
        "xtask: installed below {}; start it with `systemctl enable --now roomgate` (flags: ROOMGATE_ARGS in /etc/default/roomgate)",
        root.display()
    );
    Ok(())
}

/// Put the binary, the unit and the user below `root`, creating the user if missing.
pub fn install_into(root: &Path, binary: &Path) -> Result<()> {
    if !binary.is_file() {
        bail!("no binary at {}", binary.display());
    }
    let repo = workspace_root();
    place(binary, &root.join("usr/local/bin/roomgate"), 0o755)?;
    place(
        &repo.join(UNIT),
        &root.join("etc/systemd/system/roomgate.service"),
        0o644,
    )?;
    place(
        &repo.join(SYSUSERS),
        &root.join("etc/sysusers.d/roomgate.conf"),
        0o644,
    )?;
    create_user(root)
}

/// Copy `from` to a temporary name beside `to`, set `mode`, rename it over `to`.
fn place(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let dir = to.parent().context("target has no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.xtask-{}",
        to.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("renaming into {}", to.display()))?;
    println!("xtask: installed {} ({mode:o})", to.display());
    Ok(())
}

fn create_user(root: &Path) -> Result<()> {
    if crate::setup::on_path("systemd-sysusers").is_some() {
        // Reads root's sysusers.d (ours included); creates only what is missing.
        let mut cmd = Command::new("systemd-sysusers");
        if root != Path::new("/") {
            cmd.arg(format!("--root={}", root.display()));
        }
        return run(&mut cmd).context("creating the roomgate user");
    }
    if root != Path::new("/") {
        bail!("--root needs systemd-sysusers to create the user");
    }
    let exists = Command::new("getent")
        .args(["passwd", USER])
        .output()
        .is_ok_and(|o| o.status.success());
    if exists {
        return Ok(());
    }
    run(Command::new("useradd").args([
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        USER,
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempRoot(PathBuf);
    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p)
            .expect("installed")
            .permissions()
            .mode()
            & 0o7777
    }

    /// Installing twice into an empty root gives the three files with their modes and
    /// exactly one roomgate user and group; the installed unit passes
    /// `systemd-analyze verify` (unknown keys and bad values are only warnings there,
    /// so any output fails too) and stays at exposure <= 2.0 in `systemd-analyze security`.
    #[test]
    fn install_into_a_root_is_complete_idempotent_and_verifies() {
        if crate::setup::on_path("systemd-sysusers").is_none()
            || crate::setup::on_path("systemd-analyze").is_none()
        {
            panic!("this test needs systemd-sysusers and systemd-analyze (package systemd)");
        }
        let root =
            TempRoot(std::env::temp_dir().join(format!("xtask-install-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&root.0);
        // Any executable stands in for the release binary (building it is not the point).
        let binary = std::env::current_exe().expect("test executable");
        install_into(&root.0, &binary).expect("first install");
        install_into(&root.0, &binary).expect("second install");
        let bin = root.0.join("usr/local/bin/roomgate");
        let unit = root.0.join("etc/systemd/system/roomgate.service");
        assert_eq!(mode(&bin), 0o755);
        assert_eq!(mode(&unit), 0o644);
        assert_eq!(mode(&root.0.join("etc/sysusers.d/roomgate.conf")), 0o644);
        assert_eq!(
            std::fs::read(&unit).expect("unit"),
            std::fs::read(workspace_root().join(UNIT)).expect("repo unit")
        );
        for (file, prefix) in [("etc/passwd", "roomgate:x:"), ("etc/group", "roomgate:x:")] {
            let text = std::fs::read_to_string(root.0.join(file)).expect(file);
            let n = text.lines().filter(|l| l.starts_with(prefix)).count();
            assert_eq!(n, 1, "{file}:\n{text}");
        }
        let passwd = std::fs::read_to_string(root.0.join("etc/passwd")).expect("passwd");
        assert!(
            passwd.contains(":/nonexistent:/usr/sbin/nologin"),
            "{passwd}"
        );
        // systemd-analyze resolves the unit's dependencies below the root.
        let units = root.0.join("usr/lib/systemd");
        std::fs::create_dir_all(&units).expect("unit dir");
        let copied = Command::new("cp")
            .args(["-a", "/usr/lib/systemd/system"])
            .arg(&units)
            .status()
            .expect("cp");
        assert!(copied.success());
        let root_arg = format!("--root={}", root.0.display());
        let verify = Command::new("systemd-analyze")
            .args(["verify", &root_arg, "/etc/systemd/system/roomgate.service"])
            .output()
            .expect("systemd-analyze verify");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        assert!(verify.status.success() && said.trim().is_empty(), "{said}");
        let security = Command::new("systemd-analyze")
            .args([
                "security",
                &root_arg,
                "--offline=yes",
                "--threshold=20",
                "roomgate.service",
            ])
            .output()
            .expect("systemd-analyze security");
        assert!(
            security.status.success(),
            "{}",
            String::from_utf8_lossy(&security.stdout)
        );
    }
}
