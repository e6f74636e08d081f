//! Which simulcast layer a subscriber should receive: a pure function of what it asked
//! for, what the publisher is sending and what the subscriber's link can carry.
//!
//! Layers are ranked by the bitrate they actually arrive at, not by their RID or their
//! position in the offer: offers list layers in either order, and a publisher whose own
//! uplink is congested stops or shrinks its top layer, which the ranking then sees.

use std::fmt;
use std::time::Duration;

/// A subscriber's wish for its video quality.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerRequest {
    /// Follow the subscriber's estimated bandwidth.
    #[default]
    Auto,
    Low,
    Mid,
    High,
}

impl LayerRequest {
    pub fn parse(text: &str) -> Option<LayerRequest> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(LayerRequest::Auto),
            "low" => Some(LayerRequest::Low),
            "mid" => Some(LayerRequest::Mid),
            "high" => Some(LayerRequest::High),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LayerRequest::Auto => "auto",
            LayerRequest::Low => "low",
            LayerRequest::Mid => "mid",
            LayerRequest::High => "high",
        }
    }
}

impl fmt::Display for LayerRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a layer by its rank among `count` active layers (0 = lowest).
pub fn rank_name(rank: usize, count: usize) -> &'static str {
    match (rank, count) {
        (_, 0 | 1) => "high",
        (0, _) => "low",
        (r, c) if r + 1 >= c => "high",
        _ => "mid",
    }
}

/// A layer as the selector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// Packets arrived recently.
    pub active: bool,
    /// Measured over the last second.
    pub bitrate_bps: u64,
}

/// An upgrade needs this much headroom over the layer's bitrate, and a downgrade happens
/// only below the current layer's bitrate: the gap between the two is the hysteresis that
/// keeps a subscriber near a threshold from flapping.
pub const UPGRADE_HEADROOM: f64 = 1.25;
pub const DOWNGRADE_MARGIN: f64 = 1.0;
/// An estimate must support a higher layer for this long before the switch.
pub const UPGRADE_HOLD: Duration = Duration::from_secs(2);
/// An estimate must stay under the current layer's rate for this long before a
/// downgrade: one feedback interval's dip (a scheduling hiccup on the viewer's side) is
/// not a congested link, and a switch costs a keyframe.
pub const DOWNGRADE_HOLD: Duration = Duration::from_secs(1);

/// Active layers' indices ordered from lowest to highest bitrate, ties kept in offer
/// order. Writes into `ranked` to stay allocation-free; returns how many.
pub fn rank_layers(layers: &[LayerInfo], ranked: &mut [usize; 3]) -> usize {
    let mut n = 0;
    for (i, l) in layers.iter().enumerate().take(3) {
        if l.active {
            ranked[n] = i;
            n += 1;
        }
    }
    // Insertion sort on at most 3 entries; stable, so equal bitrates keep offer order.
    for i in 1..n {
        let mut j = i;
        while j > 0 && layers[ranked[j - 1]].bitrate_bps > layers[ranked[j]].bitrate_bps {
            ranked.swap(j - 1, j);
            j -= 1;
        }
    }
    n
}

/// The layer (index into `layers`) a subscriber should receive now.
///
/// `estimate_bps` is `None` when the subscriber gives no congestion feedback: it then
/// gets the highest layer, as a single-stream SFU would send it. `upgrade_allowed` is
/// the caller's time hysteresis ([`UPGRADE_HOLD`]): without it a higher auto target is
/// not taken yet.
pub fn choose_layer(
    request: LayerRequest,
    layers: &[LayerInfo],
    estimate_bps: Option<u64>,
    current: Option<usize>,
    upgrade_allowed: bool,
) -> Option<usize> {
    let mut ranked = [0usize; 3];
    let n = rank_layers(layers, &mut ranked);
    if n == 0 {
        return None;
    }
    let ranked = &ranked[..n];
    let pinned = |want: usize| ranked[want.min(n - 1)];
    match request {
        LayerRequest::Low => return Some(pinned(0)),
        LayerRequest::Mid => return Some(pinned(if n >= 3 { 1 } else { 0 })),
        LayerRequest::High => return Some(pinned(n - 1)),
        LayerRequest::Auto => {}
    }
    let Some(estimate) = estimate_bps else {
        return Some(ranked[n - 1]);
    };
    // A layer that just started has no measured rate yet and would look free. A viewer
    // waiting for its first layer waits for the measurement (half a second) rather than
    // start on a layer its link may not carry; one already watching ignores it for now.
    if ranked.iter().any(|&i| layers[i].bitrate_bps == 0) {
        current?;
        let mut measured = [LayerInfo {
            active: false,
            bitrate_bps: 0,
        }; 3];
        for (i, l) in layers.iter().enumerate().take(3) {
            measured[i] = LayerInfo {
                active: l.active && l.bitrate_bps > 0,
                ..*l
            };
        }
        return choose_layer(
            request,
            &measured[..layers.len().min(3)],
            estimate_bps,
            current,
            upgrade_allowed,
        );
    }
    let estimate = estimate as f64;
    let current_rank = current.and_then(|c| ranked.iter().position(|&i| i == c));
    // Highest layer the estimate carries with upgrade headroom.
    let mut best = 0;
    for (rank, &i) in ranked.iter().enumerate() {
        if layers[i].bitrate_bps as f64 * UPGRADE_HEADROOM <= estimate {
            best = rank;
        }
    }
    // A viewer's first layer is the lowest: its estimate is a guess until feedback has
    // carried the higher layers, and their measured rates lag a publisher that is still
    // ramping up. Moving up then takes the usual hold, so every layer above the lowest is
    // one the estimate has supported for a while. A viewer whose layer stopped takes what
    // fits.
    if current.is_none() {
        return Some(ranked[0]);
    }
    let Some(cur) = current_rank else {
        return Some(ranked[best]);
    };
    if best > cur {
        return Some(ranked[if upgrade_allowed { best } else { cur }]);
    }
    // Stay while the current layer still fits; below that, drop to what fits.
    if layers[ranked[cur]].bitrate_bps as f64 * DOWNGRADE_MARGIN <= estimate {
        Some(ranked[cur])
    } else {
        Some(ranked[best.min(cur)])
    }
}

/// Rank (0 = lowest) of layer `index` among the active layers.
pub fn rank_of(infos: &[LayerInfo], index: usize) -> usize {
    let mut ranked = [0; 3];
    let n = rank_layers(infos, &mut ranked);
    ranked[..n].iter().position(|&i| i == index).unwrap_or(0)
}

/// The active layer with the highest bitrate.
pub fn top_layer(infos: &[LayerInfo]) -> Option<usize> {
    let mut ranked = [0; 3];
    let n = rank_layers(infos, &mut ranked);
    n.checked_sub(1).map(|top| ranked[top])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(rates: &[(bool, u64)]) -> Vec<LayerInfo> {
        rates
            .iter()
            .map(|&(active, bitrate_bps)| LayerInfo {
                active,
                bitrate_bps,
            })
            .collect()
    }

    const THREE: [(bool, u64); 3] = [(true, 150_000), (true, 500_000), (true, 1_500_000)];

    #[test]
    fn ranks_by_bitrate_whatever_the_offer_order() {
        let l = layers(&[(true, 1_500_000), (true, 150_000), (true, 500_000)]);
        let mut r = [0; 3];
        assert_eq!(rank_layers(&l, &mut r), 3);
        assert_eq!(r, [1, 2, 0]);
        let l = layers(&[(true, 1_500_000), (false, 0), (true, 500_000)]);
        assert_eq!(rank_layers(&l, &mut r), 2);
        assert_eq!(&r[..2], &[2, 0]);
    }

    #[test]
    fn pinned_requests_ignore_the_estimate() {
        let l = layers(&THREE);
        assert_eq!(
            choose_layer(LayerRequest::Low, &l, Some(10_000_000), None, true),
            Some(0)
        );
        assert_eq!(
            choose_layer(LayerRequest::Mid, &l, Some(1), None, true),
            Some(1)
        );
        assert_eq!(
            choose_layer(LayerRequest::High, &l, Some(1), None, true),
            Some(2)
        );
        // Top layer stopped: high means the best one left.
        let l = layers(&[(true, 150_000), (true, 500_000), (false, 0)]);
        assert_eq!(
            choose_layer(LayerRequest::High, &l, None, None, true),
            Some(1)
        );
        assert_eq!(
            choose_layer(LayerRequest::Mid, &l, None, None, true),
            Some(0)
        );
    }

    #[test]
    fn auto_follows_the_estimate_with_headroom() {
        let l = layers(&THREE);
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, Some(250_000), Some(0), true),
            Some(0)
        );
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, Some(700_000), Some(0), true),
            Some(1)
        );
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, Some(1_900_000), Some(0), true),
            Some(2)
        );
        // Below even the lowest layer: still the lowest, never nothing.
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, Some(10_000), Some(2), true),
            Some(0)
        );
        // The first layer is the lowest, whatever the estimate says.
        for estimate in [10_000, 700_000, 1_900_000] {
            assert_eq!(
                choose_layer(LayerRequest::Auto, &l, Some(estimate), None, true),
                Some(0)
            );
        }
        // A viewer whose layer stopped takes what fits.
        let two = layers(&[(true, 150_000), (true, 500_000), (false, 0)]);
        assert_eq!(
            choose_layer(LayerRequest::Auto, &two, Some(1_900_000), Some(2), true),
            Some(1)
        );
        // No feedback at all: the top layer, as without simulcast.
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, None, None, true),
            Some(2)
        );
    }

    #[test]
    fn hysteresis_between_upgrade_and_downgrade() {
        let l = layers(&THREE);
        // On mid at 550 kbit/s: enough to stay, not enough to come back up to it.
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, Some(550_000), Some(1), true),
            Some(1)
        );
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, Some(550_000), Some(0), true),
            Some(0)
        );
        // Under mid's own rate: down.
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, Some(450_000), Some(1), true),
            Some(0)
        );
        // An upgrade waits for the caller's hold time.
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, Some(2_000_000), Some(0), false),
            Some(0)
        );
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, Some(2_000_000), Some(0), true),
            Some(2)
        );
        // A current layer that stopped is replaced.
        let l = layers(&[(true, 150_000), (true, 500_000), (false, 0)]);
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, Some(2_000_000), Some(2), false),
            Some(1)
        );
    }

    #[test]
    fn unmeasured_layers_are_not_taken_for_free() {
        // Every layer just started: a viewer with an estimate waits for the rates
        // instead of starting on the top layer because it looks free.
        let l = layers(&[(true, 0), (true, 0), (true, 0)]);
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, Some(250_000), None, true),
            None
        );
        // Without feedback there is nothing to wait for: the top layer in offer order.
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, None, None, true),
            Some(2)
        );
        // Watching the low layer when the top layer restarts: it is ignored until measured.
        let l = layers(&[(true, 150_000), (true, 500_000), (true, 0)]);
        assert_eq!(
            choose_layer(LayerRequest::Auto, &l, Some(5_000_000), Some(0), true),
            Some(1)
        );
    }

    #[test]
    fn names_and_requests() {
        assert_eq!(rank_name(0, 3), "low");
        assert_eq!(rank_name(1, 3), "mid");
        assert_eq!(rank_name(2, 3), "high");
        assert_eq!(rank_name(0, 2), "low");
        assert_eq!(rank_name(1, 2), "high");
        assert_eq!(rank_name(0, 1), "high");
        for r in [
            LayerRequest::Auto,
            LayerRequest::Low,
            LayerRequest::Mid,
            LayerRequest::High,
        ] {
            assert_eq!(LayerRequest::parse(r.as_str()), Some(r));
        }
        assert_eq!(LayerRequest::parse("ultra"), None);
    }
}
