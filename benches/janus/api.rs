//! The Janus HTTP API (REST + long poll), as far as the videoroom baseline needs it.
//!
//! Requests are POSTed to `/janus[/session[/handle]]`. Synchronous plugin requests answer
//! with `success` and the plugin data; asynchronous ones (`join`, `configure`, `start`)
//! answer `ack`, and their result arrives as an `event` with the same transaction on the
//! session's long poll (`GET /janus/<session>`). One session is used by one thread at a
//! time, so every event that does not match the awaited transaction can be dropped.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::JanusError;

const PLUGIN: &str = "janus.plugin.videoroom";
/// Janus holds a long poll for up to 30 s when nothing happens.
const POLL_TIMEOUT: Duration = Duration::from_secs(40);

pub struct Api {
    base: String,
    agent: ureq::Agent,
}

fn transaction() -> String {
    crate::webrtc::random_ice_string(12)
}

fn api_err(what: &str, v: &Value) -> JanusError {
    JanusError::Api(format!("{what}: {v}"))
}

impl Api {
    pub fn new(ip: Ipv4Addr, port: u16) -> Api {
        Api {
            base: format!("http://{ip}:{port}/janus"),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(POLL_TIMEOUT))
                .build()
                .into(),
        }
    }

    fn send(&self, path: &str, body: Option<&Value>) -> Result<Value, JanusError> {
        let url = format!("{}{path}", self.base);
        let result = match body {
            Some(b) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b.to_string().as_bytes()),
            None => self.agent.get(&url).call(),
        };
        let resp = result.map_err(|e| JanusError::Http(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .into_body()
            .read_to_string()
            .map_err(|e| JanusError::Http(format!("{url}: {e}")))?;
        if status != 200 {
            return Err(JanusError::Http(format!("{url}: HTTP {status}: {text}")));
        }
        serde_json::from_str(&text).map_err(|e| JanusError::Http(format!("{url}: {e}: {text}")))
    }

    fn post(&self, path: &str, mut body: Value) -> Result<Value, JanusError> {
        let tx = transaction();
        body["transaction"] = json!(tx);
        let v = self.send(path, Some(&body))?;
        if v["janus"] == "error" {
            return Err(api_err("janus error", &v));
        }
        if v["transaction"] != json!(tx) {
            return Err(api_err("reply to another transaction", &v));
        }
        Ok(v)
    }

    pub fn info(&self) -> Result<Value, JanusError> {
        self.send("/info", None)
    }

    pub fn create_session(&self) -> Result<Session<'_>, JanusError> {
        let v = self.post("", json!({"janus": "create"}))?;
        let id = v["data"]["id"]
            .as_u64()
            .ok_or_else(|| api_err("create without a session id", &v))?;
        Ok(Session { api: self, id })
    }
}

pub struct Session<'a> {
    api: &'a Api,
    pub id: u64,
}

/// The plugin's answer to an asynchronous request: its data and the JSEP it carried.
pub struct Event {
    pub data: Value,
    pub jsep: Option<Value>,
}

impl Session<'_> {
    /// A new videoroom handle.
    pub fn attach(&self) -> Result<u64, JanusError> {
        let v = self.api.post(
            &format!("/{}", self.id),
            json!({"janus": "attach", "plugin": PLUGIN}),
        )?;
        v["data"]["id"]
            .as_u64()
            .ok_or_else(|| api_err("attach without a handle id", &v))
    }

    /// A synchronous videoroom request (e.g. `create`): the plugin data.
    pub fn request(&self, handle: u64, body: Value) -> Result<Value, JanusError> {
        let v = self.api.post(
            &format!("/{}/{handle}", self.id),
            json!({"janus": "message", "body": body}),
        )?;
        let data = v["plugindata"]["data"].clone();
        if data.get("error").is_some() {
            return Err(api_err("videoroom refused", &data));
        }
        Ok(data)
    }

    /// An asynchronous videoroom request, waiting for its event on the long poll.
    pub fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
        timeout: Duration,
    ) -> Result<Event, JanusError> {
        let mut req = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            req["jsep"] = j;
        }
        let v = self.api.post(&format!("/{}/{handle}", self.id), req)?;
        if v["janus"] == "success" {
            return Ok(Event {
                data: v["plugindata"]["data"].clone(),
                jsep: v.get("jsep").cloned(),
            });
        }
        if v["janus"] != "ack" {
            return Err(api_err("neither ack nor success", &v));
        }
        let tx = v["transaction"].clone();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let polled = self.api.send(&format!("/{}?maxev=10", self.id), None)?;
            let events = match polled {
                Value::Array(a) => a,
                one => vec![one],
            };
            for e in events {
                if e["janus"] == "event" && e["transaction"] == tx {
                    let data = e["plugindata"]["data"].clone();
                    if data.get("error").is_some() {
                        return Err(api_err("videoroom refused", &data));
                    }
                    return Ok(Event {
                        data,
                        jsep: e.get("jsep").cloned(),
                    });
                }
            }
        }
        Err(JanusError::Api(format!(
            "no event for {body} within {timeout:?}",
            body = req_name(&v)
        )))
    }

    /// Tell Janus our candidates are all in the SDP (half trickle, as a browser that
    /// gathered before offering).
    pub fn trickle_completed(&self, handle: u64) -> Result<(), JanusError> {
        self.api.post(
            &format!("/{}/{handle}", self.id),
            json!({"janus": "trickle", "candidate": {"completed": true}}),
        )?;
        Ok(())
    }
}

fn req_name(v: &Value) -> String {
    v["transaction"].to_string()
}
