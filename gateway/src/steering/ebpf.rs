//! The eBPF steering program: load, fill the maps, attach to the group, read counters.
use std::{
    net::UdpSocket,
    os::fd::{AsFd, BorrowedFd},
    path::Path,
};

use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, ReusePortSockArray},
    programs::{ProgramError, SkReuseport},
    Ebpf, EbpfLoader,
};
use roomgate_common::{
    Counter, FlowKey, CONFIG_THREADS, MAP_CONFIG, MAP_COUNTERS, MAP_FLOWS, MAP_SOCKETS, MAP_UFRAGS,
    PROGRAM_NAME,
};

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("this roomgate was built without the eBPF object (run `cargo xtask build`); only --steering connected is available")]
    NotEmbedded,
    #[error("cannot read eBPF object {path}: {source}")]
    ReadObject {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse or create maps for the eBPF object: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("cannot create eBPF map {name}: {source}; kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, which is {limit} here (raise it, e.g. LimitMEMLOCK= in the systemd unit)")]
    Memlock {
        name: String,
        limit: String,
        source: std::io::Error,
    },
    #[error("eBPF object has no sk_reuseport program named {PROGRAM_NAME}")]
    MissingProgram,
    #[error("eBPF object has no map named {0}")]
    MissingMap(&'static str),
    #[error("the kernel refused the steering program: {io_error}\nverifier log:\n{verifier_log}")]
    Verifier {
        io_error: std::io::Error,
        verifier_log: String,
    },
    #[error("{phase}: {source}")]
    Program {
        phase: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("{phase}: {source}")]
    Map {
        phase: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

fn map_error(phase: &'static str) -> impl FnOnce(aya::maps::MapError) -> EbpfError {
    move |source| EbpfError::Map { phase, source }
}

fn dup_failed(io_error: std::io::Error) -> EbpfError {
    EbpfError::Map {
        phase: "duplicate flow map fd",
        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "dup",
            io_error,
        }),
    }
}

/// The steering program loaded into the kernel with its maps.
pub struct Loaded {
    ebpf: Ebpf,
    /// Our own fd of the flow map; each logic thread gets a duplicate of it.
    /// (Opening the map again by id would need CAP_SYS_ADMIN; dup needs nothing.)
    flows_fd: std::os::fd::OwnedFd,
    flows_capacity: u32,
    counters: PerCpuArray<MapData, u64>,
    verified_insns: Option<u32>,
}

#[cfg(roomgate_ebpf_embedded)]
static EMBEDDED: &[u8] = aya::include_bytes_aligned!(env!("ROOMGATE_EBPF_OBJECT_PATH"));
#[cfg(not(roomgate_ebpf_embedded))]
static EMBEDDED: &[u8] = &[];

pub fn embedded() -> bool {
    !EMBEDDED.is_empty()
}

impl Loaded {
    /// Load the program and create its maps. Done before any port is bound so that a
    /// kernel or capability problem shows up before the gateway claims the port.
    pub fn load(object: Option<&Path>, threads: u32) -> Result<Self, EbpfError> {
        let file;
        let bytes: &[u8] = match object {
            Some(path) => {
                file = std::fs::read(path).map_err(|source| EbpfError::ReadObject {
                    path: path.display().to_string(),
                    source,
                })?;
                &file
            }
            None if embedded() => EMBEDDED,
            None => return Err(EbpfError::NotEmbedded),
        };
        raise_memlock();
        let mut ebpf = EbpfLoader::new().load(bytes).map_err(object_error)?;
        let program: &mut SkReuseport = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(EbpfError::MissingProgram)?
            .try_into()
            .map_err(|source| EbpfError::Program {
                phase: "program type",
                source,
            })?;
        program.load().map_err(|e| match e {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => EbpfError::Verifier {
                io_error,
                verifier_log: format!("{verifier_log:?}"),
            },
            source => EbpfError::Program {
                phase: "load program",
                source,
            },
        })?;
        let verified_insns = verified_insns(bytes, &ebpf);
        tracing::info!(
            verified_insns = verified_insns.map_or(-1, i64::from),
            "eBPF steering program loaded and verified"
        );

        let mut config: Array<&mut MapData, u32> = ebpf
            .map_mut(MAP_CONFIG)
            .ok_or(EbpfError::MissingMap(MAP_CONFIG))?
            .try_into()
            .map_err(map_error("config map"))?;
        config
            .set(CONFIG_THREADS, threads, 0)
            .map_err(map_error("set thread count"))?;

        let flows = map_data(
            ebpf.map(MAP_FLOWS)
                .ok_or(EbpfError::MissingMap(MAP_FLOWS))?,
        )
        .ok_or(EbpfError::MissingMap(MAP_FLOWS))?;
        let flows_capacity = flows
            .info()
            .map_err(map_error("flow map info"))?
            .max_entries();
        let flows_fd = flows
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(dup_failed)?;
        let counters_map = ebpf
            .take_map(MAP_COUNTERS)
            .ok_or(EbpfError::MissingMap(MAP_COUNTERS))?;
        let counters = PerCpuArray::try_from(counters_map).map_err(map_error("counter map"))?;
        Ok(Loaded {
            ebpf,
            flows_fd,
            flows_capacity,
            counters,
            verified_insns,
        })
    }

    /// Put thread k's socket at index k of the socket array, then attach the program to
    /// the group (once: SO_ATTACH_REUSEPORT_EBPF applies to the whole group).
    pub fn attach(&mut self, sockets: &[UdpSocket]) -> Result<(), EbpfError> {
        let mut array: ReusePortSockArray<&mut MapData> = self
            .ebpf
            .map_mut(MAP_SOCKETS)
            .ok_or(EbpfError::MissingMap(MAP_SOCKETS))?
            .try_into()
            .map_err(map_error("socket array"))?;
        for (index, socket) in sockets.iter().enumerate() {
            array
                .set(index as u32, socket, 0)
                .map_err(map_error("insert socket"))?;
        }
        let program: &SkReuseport = self
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or(EbpfError::MissingProgram)?
            .try_into()
            .map_err(|source| EbpfError::Program {
                phase: "program type",
                source,
            })?;
        let first = sockets.first().ok_or(EbpfError::Program {
            phase: "attach",
            source: ProgramError::NotLoaded,
        })?;
        program.attach(first).map_err(|source| EbpfError::Program {
            phase: "attach to SO_REUSEPORT group",
            source,
        })
    }

    /// Detach from the group; the sockets keep working with the kernel's default hash
    /// until they are closed.
    pub fn detach(socket: &UdpSocket) -> Result<(), EbpfError> {
        SkReuseport::detach(socket).map_err(|source| EbpfError::Program {
            phase: "detach",
            source,
        })
    }

    /// Own fds of the live-ufrag map and the config array (see `steering::live`).
    pub fn live_ufrag_fds(
        &self,
    ) -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), EbpfError> {
        let fd = |name: &'static str| -> Result<std::os::fd::OwnedFd, EbpfError> {
            let map = self.ebpf.map(name).ok_or(EbpfError::MissingMap(name))?;
            any_map_data(map)
                .ok_or(EbpfError::MissingMap(name))?
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(dup_failed)
        };
        Ok((fd(MAP_UFRAGS)?, fd(MAP_CONFIG)?))
    }

    /// A handle on the flow map for one logic thread (its own fd, no sharing).
    pub fn flow_table(&self) -> Result<FlowTable, EbpfError> {
        let fd = self.flows_fd.try_clone().map_err(dup_failed)?;
        FlowTable::open(fd)
    }

    pub fn flows_capacity(&self) -> u32 {
        self.flows_capacity
    }

    /// Instructions the kernel's verifier processed to accept the program ("processed N
    /// insns"); `None` if the kernel would not say.
    pub fn verified_insns(&self) -> Option<u32> {
        self.verified_insns
    }

    /// Per-branch counters summed over CPUs, indexed by [`Counter`].
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize], EbpfError> {
        let mut out = [0u64; Counter::COUNT as usize];
        for c in Counter::ALL {
            let values = self
                .counters
                .get(&(c as u32), 0)
                .map_err(map_error("read counters"))?;
            out[c as usize] = values.iter().sum();
        }
        Ok(out)
    }
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::HashMap(d) => Some(d),
        _ => None,
    }
}

/// Any of the map kinds the program declares.
fn any_map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::HashMap(d) | Map::Array(d) | Map::PerCpuArray(d) | Map::ReusePortSockArray(d) => {
            Some(d)
        }
        _ => None,
    }
}

/// The verifier's processed-instruction count: from the kernel's program info (5.16+),
/// else by verifying a second copy with a statistics log (see `verifier`).
fn verified_insns(object: &[u8], ebpf: &Ebpf) -> Option<u32> {
    let program: Option<&SkReuseport> = ebpf.program(PROGRAM_NAME).and_then(|p| p.try_into().ok());
    if let Some(n) = program
        .and_then(|p| p.info().ok())
        .and_then(|i| i.verified_instruction_count())
    {
        return Some(n);
    }
    let maps: Vec<(&str, BorrowedFd<'_>)> = ebpf
        .maps()
        .filter_map(|(name, map)| Some((name, any_map_data(map)?.fd().as_fd())))
        .collect();
    const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
    match super::verifier::count_by_reloading(
        object,
        "sk_reuseport",
        BPF_PROG_TYPE_SK_REUSEPORT,
        &maps,
    ) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell how many instructions the verifier processed");
            None
        }
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (later ones to the memory
/// cgroup). Raising the soft limit to the hard one needs no privilege; the hard limit is
/// the operator's (LimitMEMLOCK= in the unit).
fn raise_memlock() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                tracing::debug!("raising RLIMIT_MEMLOCK to its hard limit failed");
            }
        }
    }
}

fn memlock_limit() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return "unknown".to_owned();
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        format!("{} KiB", lim.rlim_cur / 1024)
    }
}

/// A map the kernel refused with EPERM under a finite RLIMIT_MEMLOCK is the pre-5.11
/// memlock charge, not a missing capability: say so.
fn object_error(e: aya::EbpfError) -> EbpfError {
    if let aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) = &e {
        let limit = memlock_limit();
        if io_error.raw_os_error() == Some(libc::EPERM) && limit != "unlimited" {
            return EbpfError::Memlock {
                name: name.clone(),
                limit,
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            };
        }
    }
    EbpfError::Object(e)
}

/// One thread's handle on the flow map. Userspace is the only writer: a flow is pinned
/// after MESSAGE-INTEGRITY verified and removed when its session ends.
pub struct FlowTable {
    map: HashMap<MapData, FlowKey, u32>,
}

impl FlowTable {
    fn open(fd: std::os::fd::OwnedFd) -> Result<Self, EbpfError> {
        let data = MapData::from_fd(fd).map_err(map_error("open flow map"))?;
        let map = HashMap::try_from(Map::HashMap(data)).map_err(map_error("flow map type"))?;
        Ok(FlowTable { map })
    }

    /// Pin `key` to `thread` unless another thread holds it. Returns the holder on conflict.
    pub fn pin(
        &mut self,
        key: FlowKey,
        thread: u32,
    ) -> Result<Result<(), u32>, aya::maps::MapError> {
        const BPF_NOEXIST: u64 = 1;
        match self.map.insert(key, thread, BPF_NOEXIST) {
            Ok(()) => Ok(Ok(())),
            Err(e) => match self.map.get(&key, 0) {
                // Our own stale entry (e.g. left by an unpin that failed): keep it.
                Ok(holder) if holder == thread => Ok(Ok(())),
                Ok(holder) => Ok(Err(holder)),
                Err(_) => Err(e),
            },
        }
    }

    pub fn unpin(&mut self, key: &FlowKey) -> Result<(), aya::maps::MapError> {
        self.map.remove(key)
    }

    pub fn lookup(&self, key: &FlowKey) -> Option<u32> {
        self.map.get(key, 0).ok()
    }
}
