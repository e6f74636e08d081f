//! The directory's scripts against a real redis-server on loopback: the atomic rules
//! every cluster guarantee rests on (one owner, claims only for live active nodes,
//! renewals only by the owner, re-assertion after Redis lost its data).
use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use super::{
    config::ClusterConfig,
    directory::{Beat, Claim, Directory},
    metrics::ClusterMetrics,
    placement::{NodeRecord, NodeState},
};

struct Redis {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = std::env::temp_dir().join(format!("roomgate-dir-test-{port}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; `cargo xtask setup` installs it)");
        let redis = Redis { child, port, dir };
        for _ in 0..200 {
            if redis.cli(&["PING"]) == "PONG" {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not answer PING");
    }

    fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn directory(redis: &Redis, node: &str) -> Directory {
    let config = ClusterConfig {
        redis_url: format!("redis://127.0.0.1:{}", redis.port),
        redis_ca: None,
        node_id: node.into(),
        advertise_http: format!("http://{node}.example:8080"),
        advertise_derived: false,
        drain_timeout: Duration::from_secs(60),
        ttl: TTL,
        load_threshold: 0.7,
        prefix: "t".into(),
    };
    let metrics = Arc::new(ClusterMetrics::new().expect("metrics"));
    Directory::open(&config, metrics).expect("open")
}

fn record(id: &str, state: NodeState) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        url: format!("http://{id}.example:8080"),
        state,
        sessions: 0,
        rooms: 0,
        claims: 0,
        capacity: 100,
        busy: 0.0,
        ts_ms: 0,
        instance: format!("{id}-instance"),
    }
}

const TTL: Duration = Duration::from_secs(30);

fn published(beat: Beat) -> (Vec<String>, Vec<NodeRecord>) {
    match beat {
        Beat::Published { lost, view } => (lost, view),
        Beat::Duplicate(other) => panic!("duplicate node id: {other:?}"),
    }
}

fn owner(claim: Claim) -> Option<(String, bool)> {
    match claim {
        Claim::Owned { record, won } => Some((record.id, won)),
        Claim::Refused => None,
    }
}

#[test]
fn scripts_keep_one_owner_per_room() {
    let redis = Redis::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = directory(&redis, "a");
        let b = directory(&redis, "b");
        assert!(a.try_connect().await && b.try_connect().await);
        let no_rooms: Vec<String> = Vec::new();
        a.heartbeat(&record("a", NodeState::Active), &no_rooms, TTL, TTL)
            .await
            .unwrap();
        let (_, view) = published(
            b.heartbeat(&record("b", NodeState::Active), &no_rooms, TTL, TTL)
                .await
                .unwrap(),
        );
        assert_eq!(view.len(), 2, "both nodes are members");

        // A second process under node id "a" is refused and writes nothing.
        let mut impostor = record("a", NodeState::Active);
        impostor.instance = "another-process".into();
        impostor.url = "http://impostor.example:8080".into();
        match a
            .heartbeat(&impostor, &["r9".to_owned()], TTL, TTL)
            .await
            .unwrap()
        {
            Beat::Duplicate(Some(other)) => assert_eq!(other.url, "http://a.example:8080"),
            other => panic!("expected a duplicate, got {other:?}"),
        }
        assert!(redis.cli(&["GET", "t:node:a"]).contains("a-instance"));
        assert_eq!(redis.cli(&["EXISTS", "t:room:r9"]), "0");

        // First claim wins; a later claim for another node learns the owner.
        assert_eq!(
            owner(a.claim("r1", "a", TTL).await.unwrap()),
            Some(("a".into(), true))
        );
        assert_eq!(
            owner(b.claim("r1", "b", TTL).await.unwrap()),
            Some(("a".into(), false))
        );
        // A claim may name another live node, which then owns the room.
        assert_eq!(
            owner(a.claim("r2", "b", TTL).await.unwrap()),
            Some(("b".into(), true))
        );
        // No claim for an unknown node, nor for a draining one.
        assert_eq!(owner(a.claim("r3", "ghost", TTL).await.unwrap()), None);
        b.heartbeat(
            &record("b", NodeState::Draining),
            &["r2".to_owned()],
            TTL,
            TTL,
        )
        .await
        .unwrap();
        assert_eq!(owner(a.claim("r3", "b", TTL).await.unwrap()), None);
        // ...but a draining owner keeps its rooms.
        assert_eq!(
            owner(a.claim("r2", "a", TTL).await.unwrap()),
            Some(("b".into(), false))
        );
        assert_eq!(redis.cli(&["GET", "t:room:r3"]), "");

        // Renewal: only the owner's heartbeat extends a claim; another node's heartbeat
        // naming the room reports it as lost and leaves the claim alone.
        let (lost, _) = published(
            b.heartbeat(
                &record("b", NodeState::Draining),
                &["r1".to_owned()],
                TTL,
                TTL,
            )
            .await
            .unwrap(),
        );
        assert_eq!(lost, vec!["r1".to_owned()]);
        assert_eq!(redis.cli(&["GET", "t:room:r1"]), "a");

        // Release deletes only the releasing node's claims.
        let released = b
            .release(&["r1".to_owned(), "r2".to_owned()], false)
            .await
            .unwrap();
        assert_eq!(released, 1, "b released r2 only");
        assert_eq!(redis.cli(&["GET", "t:room:r1"]), "a");
        assert_eq!(redis.cli(&["EXISTS", "t:room:r2"]), "0");

        // A dead owner (its record gone) loses the room to the next claim.
        redis.cli(&["DEL", "t:node:a"]);
        assert_eq!(
            owner(b.claim("r1", "b", TTL).await.unwrap()),
            None,
            "b is draining"
        );
        b.heartbeat(&record("b", NodeState::Active), &no_rooms, TTL, TTL)
            .await
            .unwrap();
        assert_eq!(
            owner(b.claim("r1", "b", TTL).await.unwrap()),
            Some(("b".into(), true))
        );
        assert_eq!(
            a.lookup("r1").await.unwrap().map(|r| r.id),
            Some("b".into())
        );
        assert_eq!(a.lookup("nothing").await.unwrap(), None);

        // Redis lost everything: the owner's next heartbeat re-asserts its rooms.
        redis.cli(&["FLUSHALL"]);
        let (lost, view) = published(
            b.heartbeat(
                &record("b", NodeState::Active),
                &["r1".to_owned()],
                TTL,
                TTL,
            )
            .await
            .unwrap(),
        );
        assert!(lost.is_empty());
        assert_eq!(view.len(), 1);
        assert_eq!(redis.cli(&["GET", "t:room:r1"]), "b");
        let pttl: i64 = redis.cli(&["PTTL", "t:room:r1"]).parse().unwrap();
        assert!(
            pttl > 0 && pttl <= TTL.as_millis() as i64,
            "claims carry the TTL: {pttl}"
        );

        // Leaving removes the record and the membership.
        b.release(&["r1".to_owned()], true).await.unwrap();
        assert_eq!(redis.cli(&["EXISTS", "t:node:b"]), "0");
        assert_eq!(redis.cli(&["SISMEMBER", "t:nodes", "b"]), "0");
        assert_eq!(redis.cli(&["EXISTS", "t:room:r1"]), "0");
    });
}
