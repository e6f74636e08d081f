//! CPU accounting and placement for the media bench: process CPU from /proc/<pid>/stat,
//! per-CPU busy time from /proc/stat, and pinning of the bench's own threads.
use std::time::Duration;

/// On-CPU ns of a process (`"self"` or a pid): the sum of its threads' schedstat run
/// time, which has ns resolution (utime+stime move in 10 ms ticks, too coarse for a short
/// run of a light server). Falls back to /proc/<pid>/stat without schedstat.
pub fn process_cpu_ns(pid: &str) -> u64 {
    let precise: Option<u64> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        });
    match precise {
        Some(ns) if ns > 0 => ns,
        _ => process_ticks_ns(pid),
    }
}

/// utime+stime of a process in ns, from /proc/<pid>/stat (clock-tick resolution).
pub fn process_ticks_ns(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesised comm (which may contain spaces): utime is the 12th,
    // stime the 13th.
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks * 1_000_000_000 / clock_ticks()
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// (busy, total) jiffies of every CPU, from the `cpuN` lines of /proc/stat. Busy counts
/// user, nice, system, irq, softirq and steal: softirq matters here, because veth delivers
/// the gateway's datagrams to the subscribers' sockets in softirq on the sending CPU.
pub fn cpu_jiffies() -> Vec<(u64, u64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal
            let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
            (busy, busy + at(3) + at(4))
        })
        .collect()
}

/// Busy fraction of each CPU between two [`cpu_jiffies`] readings.
pub fn busy_between(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|((b0, t0), (b1, t1))| (b1 - b0) as f64 / (t1 - t0).max(1) as f64)
        .collect()
}

/// Pin the calling thread (and every thread it creates afterwards) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity only touch
    // the set we own, with its exact size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raise the open-file limit to its hard maximum: capacity runs hold one socket per
/// subscriber here, and the gateway (which inherits the limit) one per session in
/// connected mode.
pub fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Cores used: CPU ns over a wall-clock window.
pub fn cores(cpu_ns: u64, wall: Duration) -> f64 {
    cpu_ns as f64 / wall.as_nanos().max(1) as f64
}

/// Pids of the kernel's softirq threads (`ksoftirqd/N`). When softirq work piles up, the
/// kernel moves it from the context of the task that raised it (charged to that task) to
/// these threads (charged to nobody the bench watches), so a server's CPU per packet is
/// only complete together with theirs.
pub fn ksoftirqd_pids() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// On-CPU ns of all `ksoftirqd` threads together.
pub fn ksoftirqd_ns(pids: &[String]) -> u64 {
    pids.iter().map(|p| process_cpu_ns(p)).sum()
}

/// Pin thread `tid` (any process's, as root) to `cpu`.
pub fn pin_thread(tid: u32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: as in pin_current_thread, for another thread id.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Until `stop`, keep every thread of every process named `comm` on `cpu`: for a server
/// that a helper starts without a CPU option (and that would otherwise inherit the load
/// generator's CPU). Threads it creates later inherit the pinning of their creator.
pub fn keep_pinned(comm: &str, cpu: usize, stop: &std::sync::atomic::AtomicBool) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for pid in dir.filter_map(Result::ok) {
                let path = pid.path();
                let is_it =
                    std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim_end() == comm);
                if !is_it {
                    continue;
                }
                let Ok(tasks) = std::fs::read_dir(path.join("task")) else {
                    continue;
                };
                for t in tasks.filter_map(Result::ok) {
                    if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) {
                        let _ = pin_thread(tid, cpu);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
