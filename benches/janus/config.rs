//! Janus configuration for the baseline, written into a temporary directory: ICE-lite,
//! only the HTTP transport (bound inside the namespace) and only the videoroom plugin.
//!
//! Only what is linked into the private plugin and transport folders can load, so no other
//! plugin, transport, event handler or logger runs. `event_loops` stays unset unless asked
//! for: Janus's default, one loop thread per handle, is what the baseline measures.
use std::{
    fs,
    path::{Path, PathBuf},
};

use super::JanusError;
use crate::util::netns;

const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu/janus";
pub const HTTP_PORT: u16 = 8088;

/// The temporary configuration directory, removed on drop.
pub struct ConfigDir {
    pub dir: PathBuf,
}

fn io(what: &str, e: std::io::Error) -> JanusError {
    JanusError::Setup(format!("{what}: {e}"))
}

fn link_only(src_dir: &str, file: &str, dst: &Path) -> Result<(), JanusError> {
    fs::create_dir_all(dst).map_err(|e| io("create janus module dir", e))?;
    let src = Path::new(LIB_DIR).join(src_dir).join(file);
    if !src.exists() {
        return Err(JanusError::Setup(format!(
            "{} is missing: install Debian's janus package",
            src.display()
        )));
    }
    std::os::unix::fs::symlink(&src, dst.join(file)).map_err(|e| io("symlink janus module", e))
}

impl ConfigDir {
    /// Write the configuration. `debug_level` is Janus's log level (3 = warnings);
    /// `event_loops` replaces the thread per handle by a static pool of that many loops.
    pub fn write(debug_level: u8, event_loops: Option<usize>) -> Result<ConfigDir, JanusError> {
        let dir = std::env::temp_dir().join(format!(
            "roomgate-janus-{}-{}",
            std::process::id(),
            crate::webrtc::random_u32()
        ));
        fs::create_dir_all(&dir).map_err(|e| io("create janus config dir", e))?;
        let cfg = ConfigDir { dir };
        let d = &cfg.dir;
        link_only("plugins", "libjanus_videoroom.so", &d.join("plugins"))?;
        link_only("transports", "libjanus_http.so", &d.join("transports"))?;
        for empty in ["events", "loggers"] {
            fs::create_dir_all(d.join(empty)).map_err(|e| io("create janus dir", e))?;
        }
        let ds = d.display();
        // session_timeout = 0: setup is signalled once, then only media flows; a long
        // poll or keepalive during the measured window would add API work to Janus's CPU.
        let janus = format!(
            r#"general: {{
	configs_folder = "{ds}"
	plugins_folder = "{ds}/plugins"
	transports_folder = "{ds}/transports"
	events_folder = "{ds}/events"
	loggers_folder = "{ds}/loggers"
	debug_level = {debug_level}
	session_timeout = 0
{loops}	server_name = "roomgate-baseline"
	interface = "{gw_ip}"
}}
certificates: {{
}}
media: {{
}}
nat: {{
	nice_debug = false
	ice_lite = true
	full_trickle = false
	ice_enforce_list = "{gw_if}"
	ipv6 = false
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
	broadcast = false
}}
"#,
            loops = event_loops.map_or(String::new(), |n| format!("\tevent_loops = {n}\n")),
            gw_if = netns::NS_IF,
            gw_ip = netns::NS_IP
        );
        let http = format!(
            r#"general: {{
	json = "plain"
	base_path = "/janus"
	http = true
	port = {HTTP_PORT}
	ip = "{ip}"
	https = false
}}
admin: {{
	admin_http = false
	admin_https = false
}}
"#,
            ip = netns::NS_IP
        );
        let videoroom = "general: {\n}\n";
        for (name, text) in [
            ("janus.jcfg", janus.as_str()),
            ("janus.transport.http.jcfg", http.as_str()),
            ("janus.plugin.videoroom.jcfg", videoroom),
        ] {
            fs::write(d.join(name), text).map_err(|e| io(name, e))?;
        }
        Ok(cfg)
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
