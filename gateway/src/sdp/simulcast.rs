//! `a=rid` (RFC 8851) and `a=simulcast` (RFC 8853): how a publisher names the layers it
//! sends on one m-line. The layers carry no SSRC in the SDP (Chrome announces none); the
//! forwarder binds them by the RID in the `sdes:rtp-stream-id` header extension.

use super::{parse::syntax, SdpError};

/// RFC 8852 §3.1 sends a RID in an SDES item, whose length is one byte.
const MAX_RID_LEN: usize = 255;
/// `a=rid` lines kept per m-line; browsers offer at most four layers.
pub(super) const MAX_RIDS: usize = 16;
/// RIDs named in one `a=simulcast` line, counting alternatives.
const MAX_SIMULCAST_IDS: usize = 64;

/// Which way the RID's stream flows, from the point of view of the side that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RidDirection {
    Send,
    Recv,
}

impl RidDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            RidDirection::Send => "send",
            RidDirection::Recv => "recv",
        }
    }

    fn from_value(v: &str) -> Option<RidDirection> {
        match v {
            "send" => Some(RidDirection::Send),
            "recv" => Some(RidDirection::Recv),
            _ => None,
        }
    }
}

/// One `a=rid:<id> <send|recv> [<params>]` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rid {
    /// 1 to 255 characters of `[A-Za-z0-9_-]`.
    pub id: String,
    pub direction: RidDirection,
    /// The restrictions as written (`pt=96;max-width=1280`), if any.
    pub params: Option<String>,
}

impl Rid {
    /// Whether the stream may use payload type `pt`: a `pt=` restriction (RFC 8851 §4)
    /// limits a layer to the listed formats, so a layer that excludes the chosen codec
    /// can never be received.
    pub fn allows_payload_type(&self, pt: u8) -> bool {
        let Some(params) = &self.params else {
            return true;
        };
        let Some(list) = params.split(';').find_map(|p| p.trim().strip_prefix("pt=")) else {
            return true;
        };
        list.split(',').any(|p| p.trim().parse::<u8>() == Ok(pt))
    }

    /// Parses the value of an `a=rid` line.
    pub(super) fn parse(value: &str, line: usize) -> Result<Rid, SdpError> {
        let mut words = value.split_whitespace();
        let (Some(id), Some(direction)) = (words.next(), words.next()) else {
            return Err(syntax(line, "a=rid needs <rid-id> <send|recv> [<params>]"));
        };
        check_rid_id(id, line, "a=rid")?;
        let direction = RidDirection::from_value(direction).ok_or_else(|| {
            syntax(
                line,
                format!("a=rid direction {direction:?} is not send or recv"),
            )
        })?;
        let params: Vec<&str> = words.collect();
        Ok(Rid {
            id: id.to_owned(),
            direction,
            params: (!params.is_empty()).then(|| params.join(" ")),
        })
    }
}

/// One simulcast stream: the first of its alternatives (RFC 8853 §5.1 lets the offerer
/// list formats it could send instead; roomgate takes the preferred one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulcastStream {
    pub rid: String,
    /// Written with a leading `~`: announced but not sent until resumed.
    pub paused: bool,
}

/// `a=simulcast:send <list> [recv <list>]` (either order), streams in the order written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Simulcast {
    pub send: Vec<SimulcastStream>,
    pub recv: Vec<SimulcastStream>,
}

/// A parsed `a=simulcast` line together with every RID it names (alternatives included),
/// so the m-line can check them against its `a=rid` lines once the section is read.
pub(super) struct ParsedSimulcast {
    pub simulcast: Simulcast,
    pub named: Vec<(RidDirection, String)>,
    pub line: usize,
}

impl ParsedSimulcast {
    pub(super) fn parse(value: &str, line: usize) -> Result<ParsedSimulcast, SdpError> {
        let words: Vec<&str> = value.split_whitespace().collect();
        if !matches!(words.len(), 2 | 4) {
            return Err(syntax(
                line,
                "a=simulcast needs send <list> [recv <list>] or recv <list> [send <list>]",
            ));
        }
        let mut simulcast = Simulcast::default();
        let mut named = Vec::new();
        let mut seen: Vec<RidDirection> = Vec::with_capacity(2);
        for pair in words.chunks(2) {
            let (dir, list) = (pair[0], pair[1]);
            let direction = RidDirection::from_value(dir).ok_or_else(|| {
                syntax(
                    line,
                    format!("a=simulcast direction {dir:?} is not send or recv"),
                )
            })?;
            if seen.contains(&direction) {
                return Err(syntax(line, format!("a=simulcast has two {dir} lists")));
            }
            seen.push(direction);
            let streams = match direction {
                RidDirection::Send => &mut simulcast.send,
                RidDirection::Recv => &mut simulcast.recv,
            };
            for alternatives in list.split(';') {
                let mut first = None;
                for sc_id in alternatives.split(',') {
                    let (paused, rid) = match sc_id.strip_prefix('~') {
                        Some(rid) => (true, rid),
                        None => (false, sc_id),
                    };
                    check_rid_id(rid, line, "a=simulcast")?;
                    if named.len() >= MAX_SIMULCAST_IDS {
                        return Err(SdpError::Limit {
                            line,
                            what: "RIDs in a=simulcast",
                            max: MAX_SIMULCAST_IDS,
                        });
                    }
                    // RFC 8853 §5.1: a RID names one stream, so it appears once.
                    if named.iter().any(|(_, n)| n == rid) {
                        return Err(syntax(line, format!("a=simulcast names rid {rid:?} twice")));
                    }
                    named.push((direction, rid.to_owned()));
                    first.get_or_insert(SimulcastStream {
                        rid: rid.to_owned(),
                        paused,
                    });
                }
                // split always yields one item, and an empty one fails check_rid_id.
                streams.extend(first);
            }
        }
        Ok(ParsedSimulcast {
            simulcast,
            named,
            line,
        })
    }

    /// RFC 8853 §5.1: every RID a simulcast list names must be declared by an `a=rid` of
    /// the same direction on the m-line.
    pub(super) fn check(&self, rids: &[Rid]) -> Result<(), SdpError> {
        for (direction, id) in &self.named {
            match rids.iter().find(|r| &r.id == id) {
                None => {
                    return Err(syntax(
                        self.line,
                        format!("a=simulcast names rid {id:?}, which has no a=rid line"),
                    ))
                }
                Some(rid) if rid.direction != *direction => {
                    return Err(syntax(
                        self.line,
                        format!(
                            "a=simulcast {} list names rid {id:?}, which a=rid declares {}",
                            direction.as_str(),
                            rid.direction.as_str()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// RFC 8851 §10 `rid-id`: letters, digits, `-` and `_`; RFC 8852 bounds the length.
fn check_rid_id(id: &str, line: usize, what: &str) -> Result<(), SdpError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_RID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(syntax(
            line,
            format!("{what} rid {id:?} must be 1 to {MAX_RID_LEN} characters of A-Z a-z 0-9 - _"),
        ))
    }
}
