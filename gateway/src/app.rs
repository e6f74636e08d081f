//! Start-up order, run, and clean shutdown.
//!
//! 1. config is validated (in `main`) before anything else;
//! 2. the eBPF program is loaded before any port is bound, so `--steering ebpf` on a
//!    host without the capability fails without having claimed the port;
//! 3. the UDP group and the HTTP listener are bound, the program attached;
//! 4. logic threads start; SIGINT/SIGTERM stop everything and release the group.
use std::{net::SocketAddr, sync::Arc};

use tracing::{info, warn};

use crate::{
    config::Config,
    control::{self, ApiState},
    logic::{self, ThreadSetup},
    net,
    steering::{self, ActiveMode},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("eBPF steering: {0}")]
    Ebpf(#[from] steering::ebpf::EbpfError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error("cannot bind HTTP API to {addr}: {source}")]
    HttpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start logic threads: {0}")]
    Threads(std::io::Error),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Identity(#[from] crate::media::identity::IdentityError),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

pub fn run(config: Config) -> Result<(), StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: Config) -> Result<(), StartError> {
    // Register for signals first: a SIGTERM that arrives right after "ready" must stop
    // us cleanly, not kill us with the default action.
    let shutdown = ShutdownSignals::register().map_err(StartError::Runtime)?;
    let prepared = steering::prepare(&config)?;

    let sockets = net::bind_group(config.udp_bind, config.threads, config.buffers)?;
    // Every socket got the same request; the first one tells what the kernel granted.
    let buffers = sockets
        .first()
        .map(|s| net::buffers::size_buffers(s, config.buffers));
    if let Some(b) = buffers.filter(|b| !b.capped_sysctls().is_empty()) {
        warn!(
            recv_requested = b.recv.requested,
            recv_effective = b.recv.effective,
            send_requested = b.send.requested,
            send_effective = b.send.effective,
            "socket buffers are smaller than requested (no CAP_NET_ADMIN to force them); bursts may be dropped: raise sysctl {}",
            b.capped_sysctls().join(" and ")
        );
    }
    let local_addr = sockets
        .first()
        .and_then(|s| s.local_addr().ok())
        .unwrap_or(config.udp_bind);
    let http = tokio::net::TcpListener::bind(config.http_bind)
        .await
        .map_err(|source| StartError::HttpBind {
            addr: config.http_bind,
            source,
        })?;
    let http_addr = http.local_addr().unwrap_or(config.http_bind);
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::HttpBind { addr, source })?,
        ),
        None => None,
    };

    let steering = Arc::new(steering::activate(prepared, &config, &sockets)?);
    if steering.mode == ActiveMode::Connected {
        if let Some(reason) = &steering.fallback_reason {
            warn!(%reason, "running in CONNECTED fallback mode (requested: {})", config.steering.as_str());
        }
    }
    // Keep duplicates of the group's fds so the program can be detached explicitly at
    // shutdown, after the threads have closed theirs.
    let detach_handle: Vec<std::net::UdpSocket> = sockets
        .first()
        .and_then(|s| s.try_clone().ok())
        .into_iter()
        .collect();

    let identity = Arc::new(crate::media::Identity::generate()?);
    let candidates = vec![SocketAddr::new(config.public_ip, local_addr.port())];
    let limits = logic::Limits {
        max_sessions: config.max_sessions,
        max_participants_per_room: config.max_participants_per_room,
        sessions_total: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    };
    let mut setups = Vec::with_capacity(sockets.len());
    for (index, socket) in sockets.into_iter().enumerate() {
        setups.push(ThreadSetup {
            index,
            threads: config.threads,
            mode: steering.mode,
            socket,
            local_addr,
            flows: steering.flow_table()?,
            identity: identity.clone(),
            candidates: candidates.clone(),
            limits: limits.clone(),
            buffers: config.buffers,
            gso: config.gso,
        });
    }
    let (handles, joins) = logic::spawn_all(setups).map_err(StartError::Threads)?;
    let cluster = match config.cluster.clone() {
        Some(mut c) => {
            if c.advertise_derived {
                c.advertise_http = format!("http://{http_addr}");
            }
            let cluster = crate::cluster::Cluster::new(c, handles.clone(), config.max_sessions)?;
            cluster.start().await?;
            Some(cluster)
        }
        None => None,
    };

    let state = Arc::new(ApiState {
        threads: handles.clone(),
        steering: steering.clone(),
        public_ip: config.public_ip,
        udp_port: local_addr.port(),
        udp_addr: local_addr.to_string(),
        auth_token: config.auth_token.clone(),
        buffers,
        cluster: cluster.clone(),
    });
    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            let router = control::metrics_router(state.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    warn!(error = %e, "metrics server error");
                }
            });
            addr
        }
        None => None,
    };
    info!(
        udp = %local_addr,
        http = %http_addr,
        threads = config.threads,
        mode = steering.mode.as_str(),
        public_ip = %config.public_ip,
        "roomgate ready"
    );
    // A machine-readable line for scripts and tests that start roomgate on port 0.
    let metrics = metrics_addr
        .map(|a| format!(" metrics={a}"))
        .unwrap_or_default();
    let node = cluster
        .as_ref()
        .map(|c| format!(" cluster={}", c.node_id()))
        .unwrap_or_default();
    println!(
        "roomgate ready udp={local_addr} http={http_addr} mode={} threads={}{metrics}{node}",
        steering.mode.as_str(),
        config.threads
    );

    let server = axum::serve(http, control::router(state))
        .with_graceful_shutdown(shutdown.wait(cluster.clone()));
    if let Err(e) = server.await {
        warn!(error = %e, "HTTP server error");
    }

    info!("shutting down");
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    for h in &handles {
        h.request_stop();
    }
    for j in joins {
        let _ = j.join();
    }
    steering.detach(&detach_handle);
    info!("stopped");
    Ok(())
}

struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Alone, SIGINT and SIGTERM both stop at once. In a cluster SIGTERM drains (what
    /// a rolling upgrade sends): the wait ends when the node is drained, or at once on
    /// SIGINT or a second SIGTERM.
    async fn wait(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) {
        let Some(cluster) = cluster else {
            tokio::select! {
                _ = self.interrupt.recv() => info!("SIGINT received"),
                _ = self.terminate.recv() => info!("SIGTERM received"),
            }
            return;
        };
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => {
                    info!("SIGINT received");
                    return;
                }
                _ = self.terminate.recv() => {
                    if cluster.is_draining() {
                        info!("second SIGTERM received: stopping now");
                        return;
                    }
                    info!("SIGTERM received: draining (SIGINT or another SIGTERM stops at once)");
                    cluster.drain();
                }
                _ = cluster.drained.notified() => return,
            }
        }
    }
}
