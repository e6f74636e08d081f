//! The eBPF flow map as the kernel holds it, read independently of roomgate's own gauge.
//!
//! The map is found through the gateway's open file descriptors (/proc/PID/fdinfo names
//! the map id, type and sizes of each BPF map fd), then opened by id and walked key by
//! key with aya. Needs root (CAP_SYS_ADMIN to open a map by id), as the eBPF tests do.
use aya::maps::{HashMap, Map, MapData};

/// BPF_MAP_TYPE_HASH.
const HASH: u32 = 1;
/// FLOWS: a 20-byte key (family, address, port) to a u32 thread index.
const KEY_SIZE: u32 = 20;
const VALUE_SIZE: u32 = 4;

/// The id of the FLOWS map `pid` holds: the hash map with FLOWS's key and value sizes and
/// `capacity` entries. Panics when there is none, or more than one.
pub fn flows_map_id(pid: u32, capacity: u32) -> u32 {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids: Vec<u32> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            let field = |k: &str| -> Option<u32> {
                info.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse().ok())
            };
            let flows = field("map_type:")? == HASH
                && field("key_size:")? == KEY_SIZE
                && field("value_size:")? == VALUE_SIZE
                && field("max_entries:")? == capacity;
            flows.then(|| field("map_id:")).flatten()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1, "FLOWS maps held by pid {pid}: {ids:?}");
    ids[0]
}

/// Entries in the kernel map `id`, counted by walking its keys.
pub fn entries(id: u32) -> usize {
    let data = MapData::from_id(id).unwrap_or_else(|e| panic!("open BPF map {id}: {e}"));
    let map: HashMap<MapData, [u8; KEY_SIZE as usize], u32> = HashMap::try_from(Map::HashMap(data))
        .unwrap_or_else(|e| panic!("BPF map {id} as a hash map: {e}"));
    let mut n = 0;
    for k in map.keys() {
        if let Err(e) = k {
            panic!("walking BPF map {id}: {e}");
        }
        n += 1;
    }
    n
}
