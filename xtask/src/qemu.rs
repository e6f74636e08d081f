//! Run a command of this machine inside another Linux kernel: a Debian kernel booted under
//! QEMU (TCG; nested KVM hangs on these VMs) with the host's root filesystem shared
//! read-only over 9p below a tmpfs overlay, so the compiled binaries run unchanged.
//!
//! - The kernel package comes from Debian with apt, through a private sources list, lists
//!   directory and cache, so the machine's own apt configuration and state stay untouched.
//! - A busybox-static initramfs loads the virtio/9p/overlay modules, mounts the host root,
//!   chroots, runs the command with its output on the serial console, and powers off.
//! - The command's exit code comes back through a marker line on the console.
use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    build::{run, workspace_root},
    setup::apt_install,
};

/// A Debian kernel package to boot.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    /// Short name used on the command line and under `target/kernels/` ("5.10").
    pub name: &'static str,
    /// Debian suite that carries the package.
    pub suite: &'static str,
    /// The package, e.g. `linux-image-5.10.0-32-amd64`.
    pub package: &'static str,
    /// `uname -r` of that kernel: the directory under `lib/modules` and the vmlinuz suffix.
    pub release: &'static str,
}

/// Kernels known to boot this way (see DESIGN's kernel matrix). Debian's mirror carries
/// only the current ABI of a suite's kernel (bookworm: 6.1.0-47 and 6.1.0-50 when this was
/// written); when the pinned one disappears, `apt-get download` fails and this list needs
/// the new name.
pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "5.10",
        suite: "bullseye",
        package: "linux-image-5.10.0-32-amd64",
        release: "5.10.0-32-amd64",
    },
    KernelSpec {
        name: "6.1",
        suite: "bookworm",
        package: "linux-image-6.1.0-50-amd64",
        release: "6.1.0-50-amd64",
    },
];

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Modules the initramfs loads, in dependency order. A module may be built in (listed in
/// `modules.builtin`), stored plain or compressed (`.ko.xz`).
/// Since 5.13 virtio_pci needs its modern/legacy device modules; since 5.17 (as in 6.1)
/// fscache needs netfs.
const MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "9pnet",
    "9pnet_virtio",
    "netfs",
    "fscache",
    "9p",
    "overlay",
];

const EXIT_MARKER: &str = "ROOMGATE-GUEST-EXIT=";
const BEGIN_MARKER: &str = "ROOMGATE-GUEST-BEGIN";

pub fn kernel_spec(name: &str) -> Result<&'static KernelSpec> {
    KERNELS.iter().find(|k| k.name == name).with_context(|| {
        let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        format!("unknown kernel {name:?}; known: {}", known.join(", "))
    })
}

/// What a command printed inside the guest and how it ended.
#[derive(Debug)]
pub struct Output {
    /// The command's exit code; `None` when the guest died or timed out before saying.
    pub exit_code: Option<i32>,
    /// The command's stdout and stderr (interleaved, as the console saw them).
    pub output: String,
    /// The whole serial console, kernel messages included, for diagnosing a failed boot.
    pub console: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Boot `kernel` under QEMU (TCG, 2 vCPUs, 2 GiB), run `command` as root inside a chroot of
/// this machine's root filesystem (read-only 9p below a tmpfs overlay; proc, sys, dev,
/// bpffs and a tmpfs /tmp mounted, loopback up) in the current directory, and return its
/// output. The guest is killed after `timeout`. Files the command writes are lost with
/// the overlay: report through the output.
pub fn run_in_kernel(kernel: &KernelSpec, command: &[String], timeout: Duration) -> Result<Output> {
    if command.is_empty() {
        bail!("run_in_kernel: empty command");
    }
    apt_install(&["qemu-system-x86", "busybox-static", "xz-utils"])?;
    let dir = fetch_kernel(kernel)?;
    let vmlinuz = dir.join(format!("boot/vmlinuz-{}", kernel.release));
    let cwd = std::env::current_dir().context("current directory")?;
    let initramfs = build_initramfs(kernel, &dir, command, &cwd)?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "2G", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initramfs)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=3",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!(
        "xtask: booting Linux {} under QEMU (TCG): {}",
        kernel.release,
        command.join(" ")
    );
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let mut stdout = child.stdout.take().context("qemu stdout")?;
    let mut stderr = child.stderr.take().context("qemu stderr")?;
    // Relay the console live (a long bench shows progress) while keeping a copy.
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            use std::io::Write;
            let _ = std::io::stdout().write_all(&buf[..n]);
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut timed_out = false;
    loop {
        if child.try_wait().context("waiting for qemu")?.is_some() {
            break;
        }
        if started.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(&initramfs);
    let console = String::from_utf8_lossy(&reader.join().unwrap_or_default())
        // The serial line turns "\n" into "\r\n".
        .replace("\r\n", "\n");
    let qemu_err = err_reader.join().unwrap_or_default();
    let elapsed = started.elapsed();
    let exit_code = console
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(EXIT_MARKER))
        .and_then(|c| c.trim().parse().ok());
    let output = console
        .split_once(&format!("{BEGIN_MARKER}\n"))
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .lines()
        .take_while(|l| !l.trim().starts_with(EXIT_MARKER))
        .collect::<Vec<_>>()
        .join("\n");
    if timed_out {
        eprintln!(
            "xtask: the guest did not finish within {} s; killed it",
            timeout.as_secs()
        );
    }
    if exit_code.is_none() && !qemu_err.trim().is_empty() {
        eprintln!("xtask: qemu stderr:\n{}", qemu_err.trim());
    }
    Ok(Output {
        exit_code,
        output,
        console,
        elapsed,
    })
}

/// Download and unpack the kernel package once into `target/kernels/<name>/`; returns
/// that directory.
pub fn fetch_kernel(kernel: &KernelSpec) -> Result<PathBuf> {
    let base = workspace_root().join("target/kernels").join(kernel.name);
    let vmlinuz = base.join(format!("boot/vmlinuz-{}", kernel.release));
    if vmlinuz.is_file() {
        return Ok(base);
    }
    let apt = workspace_root()
        .join("target/kernels/apt")
        .join(kernel.suite);
    let lists = apt.join("lists");
    let cache = apt.join("cache");
    for d in [lists.join("partial"), cache.join("archives/partial")] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let sources = apt.join("sources.list");
    std::fs::write(
        &sources,
        format!("deb [signed-by={KEYRING}] {MIRROR} {} main\n", kernel.suite),
    )
    .context("writing the private sources list")?;
    // Only this private list, lists directory and cache: the machine's apt state stays as is.
    let private = [
        format!("Dir::Etc::sourcelist={}", sources.display()),
        "Dir::Etc::sourceparts=-".to_owned(),
        format!("Dir::State::Lists={}", lists.display()),
        format!("Dir::Cache={}", cache.display()),
        "APT::Sandbox::User=root".to_owned(),
    ];
    let apt_get = |verb: &[&str], dir: &Path| -> Result<()> {
        let mut cmd = Command::new("apt-get");
        cmd.current_dir(dir).arg("-q");
        for o in &private {
            cmd.args(["-o", o]);
        }
        run(cmd.args(verb))
    };
    apt_get(&["update"], &apt)?;
    apt_get(&["download", kernel.package], &apt)?;
    let deb = std::fs::read_dir(&apt)
        .context("listing the download directory")?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("{}_", kernel.package)) && n.ends_with(".deb")
            })
        })
        .with_context(|| format!("apt-get download left no {}_*.deb", kernel.package))?;
    let unpack = base.with_file_name(format!("{}.partial", kernel.name));
    let _ = std::fs::remove_dir_all(&unpack);
    std::fs::create_dir_all(&unpack).context("creating the unpack directory")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
    let _ = std::fs::remove_dir_all(&base);
    std::fs::rename(&unpack, &base).context("moving the unpacked kernel in place")?;
    if !vmlinuz.is_file() {
        bail!("{} has no {}", deb.display(), vmlinuz.display());
    }
    Ok(base)
}

/// Quote one argument for the guest's /bin/sh.
pub(crate) fn sh_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// The initramfs: busybox, the needed modules (decompressed) and an /init that runs
/// `command` in `cwd` inside the chroot.
fn build_initramfs(
    kernel: &KernelSpec,
    dir: &Path,
    command: &[String],
    cwd: &Path,
) -> Result<PathBuf> {
    let modules_root = dir.join("lib/modules").join(kernel.release);
    let builtin = std::fs::read_to_string(modules_root.join("modules.builtin")).unwrap_or_default();
    let mut files: Vec<(String, u32, Vec<u8>)> = Vec::new();
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    files.push(("bin/busybox".into(), 0o100755, busybox));
    let mut insmods = String::new();
    for module in MODULES {
        match find_module(&modules_root, module)? {
            Some(path) => {
                let bytes = if path.extension().is_some_and(|e| e == "xz") {
                    let out = Command::new("xz")
                        .args(["-dc"])
                        .arg(&path)
                        .output()
                        .context("running xz")?;
                    if !out.status.success() {
                        bail!("xz -d {} failed", path.display());
                    }
                    out.stdout
                } else {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                };
                files.push((format!("lib/{module}.ko"), 0o100644, bytes));
                insmods.push_str(&format!(
                    "insmod /lib/{module}.ko || fail insmod {module}\n"
                ));
            }
            None if is_builtin(&builtin, module) => {}
            // Not every kernel has every module (netfs only exists since 5.17).
            None => insmods.push_str(&format!("# {module}: not in this kernel\n")),
        }
    }
    let quoted: Vec<String> = command.iter().map(|a| sh_quote(a)).collect();
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
fail() {{ echo "init: $*"; echo "{EXIT_MARKER}255"; poweroff -f; }}
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
{insmods}mkdir -p /host /rw /root
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host || fail mount 9p
mount -t tmpfs -o size=1G tmpfs /rw && mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /root || fail mount overlay
mount -t proc proc /root/proc; mount -t sysfs sys /root/sys; mount -t devtmpfs dev /root/dev
mkdir -p /root/dev/pts /root/dev/shm; mount -t devpts devpts /root/dev/pts; mount -t tmpfs tmpfs /root/dev/shm
mount -t bpf bpf /root/sys/fs/bpf; mount -t tmpfs tmpfs /root/tmp; mount -t tmpfs tmpfs /root/run
ip link set lo up
echo {BEGIN_MARKER}
chroot /root /bin/sh -c 'cd "$0" && exec "$@"' {cwd} {command} </dev/null 2>&1
echo "{EXIT_MARKER}$?"
poweroff -f
"#,
        cwd = sh_quote(&cwd.to_string_lossy()),
        command = quoted.join(" "),
    );
    files.push(("init".into(), 0o100755, init.into_bytes()));
    // One per process: two runs at once must not boot each other's command.
    let out = workspace_root().join("target/kernels").join(format!(
        "initramfs-{}-{}.cpio",
        kernel.name,
        std::process::id()
    ));
    std::fs::write(&out, newc_archive(&files)).context("writing the initramfs")?;
    Ok(out)
}

/// `<modules_root>/kernel/**/<module>.ko[.xz]` (the kernel treats `-` and `_` alike).
fn find_module(modules_root: &Path, module: &str) -> Result<Option<PathBuf>> {
    let wanted: Vec<String> = [module.to_owned(), module.replace('_', "-")]
        .iter()
        .flat_map(|m| [format!("{m}.ko"), format!("{m}.ko.xz")])
        .collect();
    let mut stack = vec![modules_root.join("kernel")];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| wanted.iter().any(|w| w == n))
            {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

fn is_builtin(list: &str, module: &str) -> bool {
    list.lines().any(|l| {
        Path::new(l)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
            .is_some_and(|n| n.replace('-', "_") == module)
    })
}

/// A cpio "newc" archive of regular files (parent directories included), as the kernel
/// unpacks an initramfs.
fn newc_archive(files: &[(String, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 1u32;
    let mut entry = |out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]| {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        ino += 1;
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    };
    let mut dirs: Vec<&str> = vec!["dev", "proc", "sys", "tmp", "bin", "lib"];
    for (name, _, _) in files {
        if let Some((parent, _)) = name.rsplit_once('/') {
            if !dirs.contains(&parent) {
                dirs.push(parent);
            }
        }
    }
    for d in dirs {
        entry(&mut out, d, 0o040755, &[]);
    }
    for (name, mode, data) in files {
        entry(&mut out, name, *mode, data);
    }
    entry(&mut out, "TRAILER!!!", 0, &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn builtin_modules_are_recognised() {
        let list = "kernel/fs/overlayfs/overlay.ko\nkernel/net/9p/9pnet.ko\n";
        assert!(is_builtin(list, "overlay"));
        assert!(!is_builtin(list, "9p"));
    }

    #[test]
    fn newc_archive_ends_with_the_trailer() {
        let a = newc_archive(&[("init".into(), 0o100755, b"x".to_vec())]);
        assert!(a.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(a.len() % 4, 0);
    }
}
