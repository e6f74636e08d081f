//! Cluster mode (issue 12), harness smoke while the tests are written.
mod support;

use std::time::Duration;

use support::{cluster::*, require_root};

#[test]
fn harness_smoke() {
    if !require_root() {
        return;
    }
    let c = Cluster::start("sm", 3);
    for n in &c.nodes {
        eprintln!("{} {} {} pid {}", n.id(), n.mode(), n.base_url(), n.pid());
        eprintln!("{}", n.cluster());
    }
    let r = c.nodes[0].request("POST", "/api/rooms/x/participants", None, None);
    eprintln!("{} {:?} {}", r.status, r.location, r.body);
    eprintln!("owner {}", c.redis_owner("x"));
    c.redis.stop();
    c.redis.start_again();
    c.nodes[1].sigint();
    eprintln!("exit {:?}", c.nodes[1].wait_exit(Duration::from_secs(5)));
    c.nodes[2].kill9();
    eprintln!("exit {:?}", c.nodes[2].wait_exit(Duration::from_secs(5)));
}
