//! The waiting room's decisions (issue 33, docs/waiting-room.md), without
//! I/O: the inlet's curve and the signed passes the edge
//! (edge/viewer-request.js) and `deduct` share.
//!
//! A place is a point in arrival time, not a number: the edge cannot count
//! (a CloudFront Function keeps no state and calls nothing), so it draws
//! places itself, with no origin call. Before the start a visitor's place
//! is drawn over the room's early window from an HMAC of their address and
//! the product, so arriving first or asking again gains nothing; after it,
//! the place is the arrival time (first come, first in). The curve moves a frontier through those
//! places; a visitor whose place it passed is let in.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

use crate::domain::ProductId;
use crate::error::ValidationError;

/// The inlet: a frontier in arrival time (ms) that advances `speed` ms of
/// arrival time per second from `at_ms`, never past the clock. The
/// controller sets the speed from the entry rate it wants and the entries
/// it sees; each change is a new piece, continuous with the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Curve {
    /// The controller's count of pieces (each `then` adds one).
    pub seq: u64,
    pub at_ms: i64,
    /// The frontier at `at_ms`.
    pub frontier_ms: i64,
    /// Arrival-time ms let in per second of the clock.
    pub speed: i64,
    /// Nobody is let in; the frontier stands.
    pub paused: bool,
}

impl Curve {
    /// The first piece of a sale's room: from the start, through the places
    /// drawn over the `early_window_ms` before it.
    pub fn opening(starts_at_ms: i64, early_window_ms: i64, speed: i64) -> Self {
        Self {
            seq: 1,
            at_ms: starts_at_ms,
            frontier_ms: starts_at_ms - early_window_ms.max(0),
            speed: speed.max(0),
            paused: false,
        }
    }

    /// Where the frontier stands at `now_ms`.
    pub fn frontier(&self, now_ms: i64) -> i64 {
        if self.paused || now_ms <= self.at_ms {
            return self.frontier_ms;
        }
        let moved = (now_ms - self.at_ms).saturating_mul(self.speed) / 1000;
        // No place ahead of the clock exists yet; a frontier already there
        // (set so) stays.
        (self.frontier_ms + moved).min(now_ms).max(self.frontier_ms)
    }

    /// Whether the visitor holding `place_ms` may go in at `now_ms`.
    pub fn lets_in(&self, place_ms: i64, now_ms: i64) -> bool {
        !self.paused && now_ms >= self.at_ms && place_ms <= self.frontier(now_ms)
    }

    /// The next piece from `now_ms`: it starts where this one stands then,
    /// so no change (a new speed, a pause, a controller that restarted and
    /// read this piece back) moves the frontier back.
    pub fn then(&self, now_ms: i64, speed: i64, paused: bool) -> Self {
        let at_ms = now_ms.max(self.at_ms);
        Self {
            seq: self.seq + 1,
            at_ms,
            frontier_ms: self.frontier(at_ms),
            speed: speed.max(0),
            paused,
        }
    }

    /// `"<seq>|<at ms>|<frontier ms>|<speed>|<paused 0|1>"`, as the edge
    /// reads it.
    pub fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.seq,
            self.at_ms,
            self.frontier_ms,
            self.speed,
            u8::from(self.paused)
        )
    }

    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split('|');
        let mut next = || parts.next();
        let curve = Self {
            seq: next()?.parse().ok()?,
            at_ms: next()?.parse().ok()?,
            frontier_ms: next()?.parse().ok()?,
            speed: next()?.parse().ok().filter(|s: &i64| *s >= 0)?,
            paused: match next()? {
                "0" => false,
                "1" => true,
                _ => return None,
            },
        };
        next().is_none().then_some(curve)
    }
}

/// A sale's room as the edge reads it, under the key `<product>#room`: the
/// curve, then `"|<early window ms>|<admission life s>|<density>"`, the
/// density the controller's estimate of entries per 1,000 s of arrival time
/// (a thousandth of an entry per second, so a sparse line measures too)
/// (for the page's "ahead of you"). No key: no room, buys go on as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomValue {
    pub curve: Curve,
    pub early_window_ms: i64,
    pub admission_secs: i64,
    pub density: i64,
}

impl RoomValue {
    pub fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.curve.encode(),
            self.early_window_ms,
            self.admission_secs,
            self.density
        )
    }

    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.rsplitn(4, '|');
        let density = parts.next()?.parse().ok().filter(|d: &i64| *d >= 0)?;
        let admission_secs = parts.next()?.parse().ok().filter(|s: &i64| *s > 0)?;
        let early_window_ms = parts.next()?.parse().ok().filter(|w: &i64| *w >= 0)?;
        Some(Self {
            curve: Curve::parse(parts.next()?)?,
            early_window_ms,
            admission_secs,
            density,
        })
    }
}

/// A sale's waiting room, as the admin API sets it (the template gives
/// the defaults): on at the sale's creation or never, since a buy of a
/// product with a room needs an admission and a room that appeared
/// mid-sale would refuse buyers who had no way to queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingRoom {
    /// Arrivals this long before the start draw their places at random.
    /// Fixed at creation: places are drawn over it.
    pub early_window_secs: u32,
    /// Entries per second the inlet aims at before any is measured.
    pub start_rate: u32,
    /// Entries per second the inlet never exceeds.
    pub ceiling: u32,
    /// How long an admission lets its holder buy.
    pub admission_secs: u32,
    /// An operator's pause: nobody is let in; the frontier stands.
    #[serde(default)]
    pub paused: bool,
}

impl WaitingRoom {
    /// The defaults where the deployment sets none (`config::room_defaults`).
    pub const DEFAULT: Self = Self {
        early_window_secs: 600,
        start_rate: 50,
        ceiling: 500,
        admission_secs: 120,
        paused: false,
    };
    pub const MAX_EARLY_WINDOW_SECS: u32 = 86_400;
    pub const ADMISSION_SECS: std::ops::RangeInclusive<u32> = 10..=3_600;

    pub fn validate(&self) -> Result<(), ValidationError> {
        let bad = |rule: &str| Err(ValidationError::BadField(format!("waiting_room: {rule}")));
        if self.early_window_secs > Self::MAX_EARLY_WINDOW_SECS {
            return bad("early_window_secs must be at most 86400 (a day)");
        }
        if self.ceiling == 0 || self.start_rate == 0 || self.start_rate > self.ceiling {
            return bad(
                "start_rate and ceiling are entries per second, 1 <= start_rate <= ceiling",
            );
        }
        if !Self::ADMISSION_SECS.contains(&self.admission_secs) {
            return bad("admission_secs must be from 10 to 3600");
        }
        Ok(())
    }
}

/// A change to a room (the admin API's body): what it names replaces the
/// room's (at creation: the deployment's defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomChange {
    pub early_window_secs: Option<u32>,
    pub start_rate: Option<u32>,
    pub ceiling: Option<u32>,
    pub admission_secs: Option<u32>,
    pub paused: Option<bool>,
}

impl RoomChange {
    /// `room` with this change, validated.
    pub fn apply(&self, room: WaitingRoom) -> Result<WaitingRoom, ValidationError> {
        let next = WaitingRoom {
            early_window_secs: self.early_window_secs.unwrap_or(room.early_window_secs),
            start_rate: self.start_rate.unwrap_or(room.start_rate),
            ceiling: self.ceiling.unwrap_or(room.ceiling),
            admission_secs: self.admission_secs.unwrap_or(room.admission_secs),
            paused: self.paused.unwrap_or(room.paused),
        };
        next.validate()?;
        Ok(next)
    }
}

/// What the controller saw of the origin since its last pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Admissions `deduct` redeemed, and the arrival time (ms) the frontier
    /// passed, over the same stretch: their ratio is the line's density.
    pub entries: u64,
    pub frontier_advance_ms: i64,
    /// Entries per second the origin can take at most: the share of the
    /// API's quota and what the admission script takes (None: no bound).
    pub capacity: Option<f64>,
    /// The orders queue's oldest message, DynamoDB's throttles and the
    /// functions' errors: any of them over its bound means back off.
    pub queue_age_ms: i64,
    pub throttles: u64,
    pub errors: u64,
    /// The places the room's sampled first visits counted (one in
    /// [`SAMPLE_EVERY`]) in each second of arrival time from the frontier
    /// to [`Inlet::ahead`]'s end: the line's density where the frontier
    /// goes next, before anyone there came through.
    pub ahead: Vec<u64>,
}

/// One first visit in this many is counted at the origin (the room's page
/// asks for `/api/flash-sale/room/seen`, deduct counts the place): the
/// controller's view of the line ahead of the frontier, for a fiftieth of
/// the arrivals in origin calls. The edge draws the same (`SAMPLE`).
pub const SAMPLE_EVERY: u32 = 50;

/// Whether the place of `nonce` (hex) is one the room samples.
pub fn sampled(nonce: &str) -> bool {
    nonce
        .get(..4)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .is_some_and(|n| n % SAMPLE_EVERY == 0)
}

/// The inlet controller's rule, one pass at a time (AIMD, as TCP): the
/// entry rate climbs by a tenth of the ceiling a pass while the origin is
/// healthy and drops by 30% when it is not; the frontier's speed is that
/// rate over the measured density.
pub struct Inlet;

impl Inlet {
    /// The orders queue may age this much before the inlet backs off.
    pub const QUEUE_AGE_MS: i64 = 5_000;
    /// The inlet never closes by itself below this rate (a pause does).
    pub const FLOOR: f64 = 1.0;
    /// Fewer sampled places ahead than this say too little: the density
    /// measured from entries stands.
    pub const MIN_SAMPLES: u64 = 3;
    /// A burst: at least this many sampled places within
    /// [`Self::BURST_SECS`] of arrival time, and three standard deviations
    /// above what the line's mean would put there (sampling one visit in
    /// fifty is noisy: a quiet line shows a few by chance).
    pub const BURST_SAMPLES: u64 = 4;
    pub const BURST_SECS: usize = 2;

    /// The controller's step: short, as it sees the line ahead in the
    /// sampled places (the entries behind, which lag a visitor's refresh
    /// and buy, are blended over steps).
    pub const STEP_MS: i64 = 2_000;
    /// How long a step takes to reach the edge (the store's propagation,
    /// the edge's copy).
    pub const REACHES_EDGE_MS: i64 = 2_000;
    /// How much of the line ahead the sampled places are read for.
    pub const LINE_AHEAD_MS: i64 = 600_000;

    /// The stretch of arrival time (ms) whose sampled places say how dense
    /// the line is ahead: from the frontier to the clock (the places drawn
    /// after it, before the start, are read as the line grows), at most
    /// [`Self::LINE_AHEAD_MS`].
    pub fn ahead(curve: &Curve, now_ms: i64) -> (i64, i64) {
        let from = curve.frontier(now_ms);
        (from, now_ms.min(from + Self::LINE_AHEAD_MS).max(from))
    }

    /// The seconds of arrival time the frontier covers before the next
    /// step reaches the edge, at `speed` (at least the clock's): where a
    /// burst must be seen now.
    pub fn near_secs(speed: i64) -> usize {
        let ms = speed.max(1_000) * (Self::STEP_MS + Self::REACHES_EDGE_MS) / 1000;
        usize::try_from((ms + 999) / 1000)
            .unwrap_or(usize::MAX)
            .max(Self::BURST_SECS)
    }

    /// The density (per 1,000 s of arrival time) of the sampled places in
    /// `per_second` (the line ahead, from the frontier), and whether it is
    /// a burst's: a burst's where there is one within its first `near`
    /// seconds ([`Self::BURST_SAMPLES`]: it must not be let in at the pace
    /// of the quiet seconds around it), else the whole line's; None when it
    /// holds fewer than [`Self::MIN_SAMPLES`].
    pub fn density_ahead(per_second: &[u64], near: usize) -> Option<(f64, bool)> {
        let scale = f64::from(SAMPLE_EVERY) * 1_000.0;
        let total: u64 = per_second.iter().sum();
        if total < Self::MIN_SAMPLES {
            return None;
        }
        let mean = total as f64 / per_second.len() as f64;
        let expected = mean * Self::BURST_SECS as f64;
        let threshold = (expected + 3.0 * expected.sqrt()).max(Self::BURST_SAMPLES as f64);
        let near = &per_second[..per_second.len().min(near + Self::BURST_SECS - 1)];
        let burst = near
            .windows(Self::BURST_SECS)
            .map(|w| w.iter().sum::<u64>())
            .max()
            .filter(|n| *n as f64 >= threshold)
            .map(|n| n as f64 / Self::BURST_SECS as f64);
        Some(match burst {
            Some(dense) => (dense * scale, true),
            None => (mean * scale, false),
        })
    }

    /// The next room value from the stored one (read back every pass, so a
    /// restarted controller or a lost publish continues from what the edge
    /// holds, never from a memory of its own).
    pub fn next(
        stored: &RoomValue,
        settings: &WaitingRoom,
        health: &Health,
        now_ms: i64,
    ) -> RoomValue {
        let ceiling = health
            .capacity
            .map_or(f64::from(settings.ceiling), |c| {
                c.min(f64::from(settings.ceiling))
            })
            .max(Self::FLOOR);
        let seen = match (health.entries, health.frontier_advance_ms) {
            (n, ms) if n > 0 && ms > 0 => Some(n as f64 * 1_000_000.0 / ms as f64),
            _ => None,
        };
        let stored_density = stored.density as f64;
        // A burst counted ahead outranks the entries behind: it is slowed
        // before it is let in, not a step after. Otherwise the denser of
        // the two: the entries (half the last estimate, half what was
        // seen, so one odd stretch does not swing the line) count only the
        // buys that got through, so an origin that throttles makes them
        // look sparse and would speed the frontier into more throttling;
        // the sampled line ahead does not depend on what got through.
        let opening = now_ms < stored.curve.at_ms;
        let near = Self::near_secs(stored.curve.speed);
        let behind = match seen {
            Some(seen) if stored.density > 0 && !opening => (stored_density + seen) / 2.0,
            Some(seen) => seen,
            None => stored_density,
        };
        let density = match Self::density_ahead(&health.ahead, near) {
            Some((d, true)) => d,
            Some((d, false)) if opening => d,
            Some((d, false)) => d.max(behind),
            None => behind,
        };
        // Nothing measured before this pass: the sale's starting rate.
        let rate = if stored.density == 0 {
            f64::from(settings.start_rate)
        } else {
            Self::rate_of(stored)
        };
        let healthy = health.queue_age_ms <= Self::QUEUE_AGE_MS
            && health.throttles == 0
            && health.errors == 0;
        // Before the sale opens nobody is let in: the rate waits for the
        // origin to show how it takes the crowd (only the density ahead,
        // and with it the speed, is set).
        let rate = if opening || settings.paused {
            rate
        } else if healthy {
            rate + ceiling / 10.0
        } else {
            rate * 0.7
        }
        .clamp(Self::FLOOR, ceiling);
        // Still nothing measured (nobody came through): the frontier keeps
        // at least the clock's pace, so an empty line does not hold anyone.
        let speed = if density > 0.0 {
            (rate / density * 1_000_000.0).round() as i64
        } else {
            stored.curve.speed.max(1_000)
        };
        let curve = stored.curve.then(now_ms, speed, settings.paused);
        RoomValue {
            curve,
            density: density.round() as i64,
            ..*stored
        }
    }

    /// The entry rate a room value aims at: its speed times its density.
    pub fn rate_of(room: &RoomValue) -> f64 {
        room.curve.speed as f64 * room.density as f64 / 1_000_000.0
    }
}

/// The KeyValueStore key of a product's room (`#` is not allowed in ids).
pub fn room_key(product: &ProductId) -> String {
    format!("{product}#room")
}

/// The KeyValueStore key of the signing keys ([`parse_keys`]).
pub const KEYS_KEY: &str = "#room-keys";

/// The signing keys in `value` (`"<id>:<secret>,..."`, the current key
/// first), as the store and SSM hold them. A secret is text (HMAC's key is
/// its bytes, as the edge's crypto module takes it).
pub fn parse_keys(value: &str) -> Result<Vec<Key>, PassError> {
    let word = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    value
        .split(',')
        .map(|k| {
            let (id, secret) = k.trim().split_once(':').ok_or(PassError::Malformed(
                "a room key is not <id>:<secret>",
            ))?;
            if !(word(id, 8) && word(secret, 256) && secret.len() >= 32) {
                return Err(PassError::Malformed(
                    "a room key needs an id of 1-8 letters, digits, - or _ and a secret of 32 or more",
                ));
            }
            Ok(Key {
                id: id.to_owned(),
                secret: secret.as_bytes().to_vec(),
            })
        })
        .collect()
}

/// `keys` as [`parse_keys`] reads them (the store's `#room-keys`).
pub fn encode_keys(keys: &[Key]) -> String {
    keys.iter()
        .map(|k| format!("{}:{}", k.id, String::from_utf8_lossy(&k.secret)))
        .collect::<Vec<_>>()
        .join(",")
}

/// What a pass admits its holder to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A place in line (the room's cookie).
    Place,
    /// A short-lived admission to buy, which `deduct` checks again.
    Admission,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Self::Place => "p1",
            Self::Admission => "a1",
        }
    }
}

/// A signing key, shared by the edge (through the KeyValueStore) and the
/// functions; the id lets the room rotate keys while passes signed with the
/// last one still verify.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A signed pass: `"<kind>.<product>.<place ms>.<nonce>.<expires ms>.<key
/// id>.<mac>"`, the mac the first 16 bytes of HMAC-SHA256 over everything
/// before it, in hex. The nonce (16 hex digits, drawn with the place)
/// names the visitor's place: an admission carries its place's nonce, and
/// `deduct` redeems it for one buyer account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    pub kind: Kind,
    pub product: ProductId,
    pub place_ms: i64,
    pub nonce: String,
    pub expires_ms: i64,
}

/// Why a pass was refused. All permanent: the holder needs a new one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PassError {
    #[error("not a waiting-room pass ({0}): take a place in the room again")]
    Malformed(&'static str),
    #[error(
        "the pass was signed with key {0:?}, which the room no longer holds (rotated out): take a place in the room again"
    )]
    UnknownKey(String),
    #[error(
        "the pass's signature does not match: it was altered or forged; take a place in the room"
    )]
    Forged,
    #[error("a {found:?} pass where a {wanted:?} is needed: go through the room's page first")]
    WrongKind { wanted: Kind, found: Kind },
    #[error("the pass is for product {0}, not this one: take a place in this product's room")]
    OtherProduct(String),
    #[error(
        "the pass expired at {0} ms: take a place in the room again (a place is kept while its pass lives)"
    )]
    Expired(i64),
}

type HmacSha256 = Hmac<Sha256>;

const MAC_BYTES: usize = 16;

fn mac(key: &Key, payload: &str) -> HmacSha256 {
    // Any key length is valid for HMAC.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&key.secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(payload.as_bytes());
    mac
}

impl Pass {
    /// The pass as the cookie and header carry it, signed with `key`.
    pub fn sign(&self, key: &Key) -> String {
        let payload = format!(
            "{}.{}.{}.{}.{}.{}",
            self.kind.tag(),
            self.product,
            self.place_ms,
            self.nonce,
            self.expires_ms,
            key.id
        );
        let tag = mac(key, &payload).finalize().into_bytes();
        format!("{payload}.{}", hex::encode(&tag[..MAC_BYTES]))
    }

    /// The pass in `value`, if one of `keys` signed it, it is a `kind`
    /// pass for `product`, and it lives at `now_ms`.
    pub fn verify(
        value: &str,
        keys: &[Key],
        kind: Kind,
        product: &ProductId,
        now_ms: i64,
    ) -> Result<Self, PassError> {
        let (payload, tag) = value
            .rsplit_once('.')
            .ok_or(PassError::Malformed("no signature"))?;
        let parts: Vec<&str> = payload.split('.').collect();
        let [tag_kind, id, place, nonce, expires, key_id] = parts[..] else {
            return Err(PassError::Malformed("not seven dot-separated fields"));
        };
        let key = keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| PassError::UnknownKey(key_id.to_owned()))?;
        // Lowercase, as signed (and as the edge compares it).
        let tag = (tag.bytes().all(|b| !b.is_ascii_uppercase()))
            .then(|| hex::decode(tag).ok())
            .flatten()
            .ok_or(PassError::Malformed("signature not lowercase hex"))?;
        if tag.len() != MAC_BYTES || mac(key, payload).verify_truncated_left(&tag).is_err() {
            return Err(PassError::Forged);
        }
        // Signed by us from here on: a field that does not parse is ours.
        let found = match tag_kind {
            "p1" => Kind::Place,
            "a1" => Kind::Admission,
            _ => return Err(PassError::Malformed("unknown kind")),
        };
        if found != kind {
            return Err(PassError::WrongKind {
                wanted: kind,
                found,
            });
        }
        if id != product.as_str() {
            return Err(PassError::OtherProduct(id.to_owned()));
        }
        let number = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| PassError::Malformed("not a number"))
        };
        let (place_ms, expires_ms) = (number(place)?, number(expires)?);
        if now_ms >= expires_ms {
            return Err(PassError::Expired(expires_ms));
        }
        Ok(Self {
            kind,
            product: product.clone(),
            place_ms,
            nonce: nonce.to_owned(),
            expires_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_700_000_000_000;

    fn key(id: &str) -> Key {
        Key {
            id: id.into(),
            secret: b"room-test-secret-0123456789abcdef".to_vec(),
        }
    }

    fn pass(kind: Kind) -> Pass {
        Pass {
            kind,
            product: ProductId::parse("p1").unwrap(),
            place_ms: T - 1_234,
            nonce: "00ff00ff00ff00ff".into(),
            expires_ms: T + 60_000,
        }
    }

    #[test]
    fn the_frontier_moves_at_its_speed_never_past_the_clock_nor_back() {
        // A 60 s early window, let in at 10 s of arrival time a second.
        let c = Curve::opening(T, 60_000, 10_000);
        assert_eq!(c.frontier(T - 5_000), T - 60_000);
        assert_eq!(c.frontier(T + 1_000), T - 50_000);
        assert!(c.lets_in(T - 50_000, T + 1_000));
        assert!(!c.lets_in(T - 49_999, T + 1_000));
        // Nobody before the start, even at the frontier.
        assert!(!c.lets_in(T - 60_000, T - 1));
        // Caught up with the clock: it follows it, and no further.
        assert_eq!(c.frontier(T + 10_000), T + 10_000);
        assert_eq!(c.frontier(T + 60_000), T + 60_000);
        // Slower, paused, resumed: each piece starts where the last stood.
        let slow = c.then(T + 2_000, 1_000, false);
        assert_eq!((slow.seq, slow.frontier_ms), (2, T - 40_000));
        assert_eq!(slow.frontier(T + 3_000), T - 39_000);
        let paused = slow.then(T + 3_000, 1_000, true);
        assert_eq!(paused.frontier(T + 9_000), T - 39_000);
        assert!(!paused.lets_in(T - 59_000, T + 9_000));
        let resumed = paused.then(T + 9_000, 1_000, false);
        assert_eq!(resumed.frontier(T + 10_000), T - 38_000);
        // A piece computed for a time before its predecessor's start (a
        // controller's clock behind) starts at the predecessor's.
        let late = resumed.then(T, 5_000, false);
        assert_eq!((late.at_ms, late.frontier_ms), (T + 9_000, T - 39_000));
    }

    #[test]
    fn a_curve_reads_back_as_written_and_nothing_else() {
        let c = Curve::opening(T, 60_000, 10_000).then(T + 2_000, 0, true);
        assert_eq!(Curve::parse(&c.encode()), Some(c));
        for bad in [
            "",
            "1|2|3|4",
            "1|2|3|4|2",
            "1|2|3|-4|0",
            "1|2|3|4|0|5",
            "x|2|3|4|0",
        ] {
            assert_eq!(Curve::parse(bad), None, "{bad:?}");
        }
    }

    fn room(speed: i64, density: i64) -> RoomValue {
        RoomValue {
            curve: Curve::opening(T, 60_000, speed),
            early_window_ms: 60_000,
            admission_secs: 120,
            density,
        }
    }

    const SETTINGS: WaitingRoom = WaitingRoom {
        early_window_secs: 60,
        start_rate: 50,
        ceiling: 100,
        admission_secs: 120,
        paused: false,
    };

    #[test]
    fn the_inlet_climbs_while_the_origin_is_healthy_and_backs_off_when_not() {
        let healthy = Health {
            entries: 100,
            frontier_advance_ms: 10_000,
            ..Health::default()
        };
        // 10 visitors a second of arrival time, aiming at 50 a second.
        let r = room(5_000, 10_000);
        let next = Inlet::next(&r, &SETTINGS, &healthy, T + 10_000);
        assert_eq!(next.density, 10_000);
        assert_eq!(Inlet::rate_of(&next), 60.0);
        assert_eq!(next.curve.speed, 6_000);
        // Never above the ceiling, nor the origin's capacity.
        let mut up = next;
        for i in 0..10 {
            up = Inlet::next(&up, &SETTINGS, &healthy, T + 20_000 + i * 1_000);
        }
        assert_eq!(Inlet::rate_of(&up), 100.0);
        let bounded = Health {
            capacity: Some(40.0),
            ..healthy.clone()
        };
        assert_eq!(
            Inlet::rate_of(&Inlet::next(&up, &SETTINGS, &bounded, T + 40_000)),
            40.0
        );
        // An aging queue, a throttle, an error: 30% off each pass.
        for sick in [
            Health {
                queue_age_ms: 6_000,
                ..healthy.clone()
            },
            Health {
                throttles: 1,
                ..healthy.clone()
            },
            Health {
                errors: 2,
                ..healthy.clone()
            },
        ] {
            assert_eq!(
                Inlet::rate_of(&Inlet::next(&up, &SETTINGS, &sick, T + 40_000)),
                70.0
            );
        }
        // Denser than thought: the frontier slows to keep the rate.
        let dense = Health {
            entries: 300,
            frontier_advance_ms: 10_000,
            ..Health::default()
        };
        let next = Inlet::next(&r, &SETTINGS, &dense, T + 10_000);
        assert_eq!(next.density, 20_000);
        assert_eq!(next.curve.speed, 3_000);
    }

    /// A sparse line (one entry in 8 s of arrival time) is measured, not
    /// rounded away, and the rate aimed at is the rate the edge lets in.
    #[test]
    fn a_sparse_line_is_measured_to_the_thousandth() {
        let sparse = Health {
            entries: 5,
            frontier_advance_ms: 40_000,
            ..Health::default()
        };
        let next = Inlet::next(&room(1_000, 0), &SETTINGS, &sparse, T + 2_000);
        assert_eq!(next.density, 125);
        assert_eq!(next.curve.speed, 480_000);
        assert_eq!(Inlet::rate_of(&next), 60.0);
    }

    /// A burst ahead of the frontier, seen in the sampled places before
    /// anyone there came through, slows the frontier at once.
    #[test]
    fn a_dense_line_ahead_slows_the_frontier_before_it_is_let_in() {
        let behind = Health {
            entries: 100,
            frontier_advance_ms: 10_000,
            ..Health::default()
        };
        let r = room(5_000, 10_000);
        let calm = Inlet::next(&r, &SETTINGS, &behind, T + 10_000);
        // 8 sampled places in 2 s of arrival time, after quiet ones: 200 a
        // second where the frontier is going, whatever the seconds around.
        let burst = Health {
            ahead: vec![0, 1, 0, 3, 5, 0, 0, 1],
            ..behind.clone()
        };
        let slowed = Inlet::next(&r, &SETTINGS, &burst, T + 10_000);
        assert_eq!(
            Inlet::rate_of(&slowed).round(),
            Inlet::rate_of(&calm).round()
        );
        assert_eq!(slowed.density, 200_000);
        assert_eq!(slowed.curve.speed, 300);
        // Spread thin, or a few more in a second by chance: the whole
        // stretch's; too few samples: nothing.
        assert_eq!(
            Inlet::density_ahead(&[1, 0, 1, 0, 1, 0], 4),
            Some((25_000.0, false))
        );
        assert_eq!(
            Inlet::density_ahead(&[2, 1, 2, 3, 1, 3], 4),
            Some((100_000.0, false))
        );
        // Once the sale is on, the denser of the line ahead and the entries
        // behind (which count only the buys that got through).
        let calm_ahead = Health {
            ahead: vec![2, 1, 2, 3, 1, 3],
            ..behind.clone()
        };
        assert_eq!(
            Inlet::next(&r, &SETTINGS, &calm_ahead, T + 10_000).density,
            100_000
        );
        let sparse_ahead = Health {
            ahead: [vec![1; 3], vec![0; 17]].concat(),
            ..behind.clone()
        };
        assert_eq!(Inlet::next(&r, &SETTINGS, &sparse_ahead, T + 10_000), calm);
        // Before it, the sampled line makes it.
        let early = Inlet::next(&r, &SETTINGS, &calm_ahead, T - 1_000);
        assert_eq!(early.density, 100_000);
        let thin = Health {
            ahead: vec![1, 0, 1, 0],
            ..behind.clone()
        };
        assert_eq!(Inlet::next(&r, &SETTINGS, &thin, T + 10_000), calm);
        // A burst the frontier reaches only after the next step is the
        // next step's business: the whole line's density now.
        let mut far = vec![1; 12];
        far[10] = 9;
        assert_eq!(Inlet::near_secs(1_000), 4);
        assert_eq!(
            Inlet::density_ahead(&far, 4),
            Some((((20.0 / 12.0) * 50_000.0), false))
        );
        assert!(Inlet::density_ahead(&far, 10).is_some_and(|(_, burst)| burst));
        // The line ahead: from the frontier to the clock, before the start
        // too (every place is ahead then).
        let c = Curve::opening(T, 60_000, 1_000);
        assert_eq!(Inlet::ahead(&c, T + 10_000), (T - 50_000, T + 10_000));
        assert_eq!(Inlet::ahead(&c, T - 1_000), (T - 60_000, T - 1_000));
        let caught_up = Curve::opening(T, 0, 100_000);
        assert_eq!(
            Inlet::ahead(&caught_up, T + 10_000),
            (T + 10_000, T + 10_000)
        );
        assert!(
            sampled("0000abcd") && sampled("0032ffff") && !sampled("0001ffff") && !sampled("zz")
        );
    }

    #[test]
    fn the_first_measure_starts_from_the_sales_rate() {
        let unmeasured = room(1_000, 0);
        let seen = Health {
            entries: 40,
            frontier_advance_ms: 2_000,
            ..Health::default()
        };
        let next = Inlet::next(&unmeasured, &SETTINGS, &seen, T + 2_000);
        // 20 a second of arrival time; 50 + 10 aimed at: 3 s a second.
        assert_eq!((next.density, next.curve.speed), (20_000, 3_000));
        let nobody = Inlet::next(&unmeasured, &SETTINGS, &Health::default(), T + 2_000);
        assert_eq!((nobody.density, nobody.curve.speed), (0, 1_000));
    }

    #[test]
    fn no_pass_moves_the_frontier_back_and_a_pause_lets_nobody_in() {
        let healthy = Health {
            entries: 10,
            frontier_advance_ms: 1_000,
            ..Health::default()
        };
        let mut r = room(5_000, 10_000);
        let mut last = r.curve.frontier(T);
        for i in 1..=20 {
            let now = T + i * 700;
            // Every other pass the origin struggles; every third the
            // controller restarts and reads back what was stored two passes
            // ago (a publish was lost), never a memory of its own.
            let health = if i % 2 == 0 {
                Health {
                    errors: 1,
                    ..healthy.clone()
                }
            } else {
                healthy.clone()
            };
            let stored = if i % 3 == 0 {
                r
            } else {
                Inlet::next(&r, &SETTINGS, &health, now - 350)
            };
            r = Inlet::next(&stored, &SETTINGS, &health, now);
            let f = r.curve.frontier(now);
            assert!(
                f >= last,
                "pass {i}: the frontier went back from {last} to {f}"
            );
            last = f;
        }
        let paused = Inlet::next(
            &r,
            &WaitingRoom {
                paused: true,
                ..SETTINGS
            },
            &healthy,
            T + 20_000,
        );
        assert!(
            !paused
                .curve
                .lets_in(paused.curve.frontier_ms - 60_000, T + 60_000)
        );
        assert_eq!(paused.curve.frontier(T + 60_000), paused.curve.frontier_ms);
        // Nor does the rate climb while nobody is let in: a resume starts
        // from the rate the pause held.
        assert!((Inlet::rate_of(&paused) - Inlet::rate_of(&r)).abs() < 0.1);
    }

    #[test]
    fn keys_read_current_first() {
        let secret = "room-test-secret-0123456789abcdef";
        let keys = parse_keys(&format!("k2:{secret}, k1:{secret}")).unwrap();
        assert_eq!(keys, [key("k2"), key("k1")]);
        for bad in [
            "k1",
            "k1:short",
            ":room-test-secret-0123456789abcdef",
            "k1:room test secret 0123456789abcdef",
        ] {
            assert!(parse_keys(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_room_reads_back_as_written() {
        let room = RoomValue {
            curve: Curve::opening(T, 60_000, 10_000),
            early_window_ms: 60_000,
            admission_secs: 120,
            density: 2_500,
        };
        assert_eq!(
            room.encode(),
            "1|1700000000000|1699999940000|10000|0|60000|120|2500"
        );
        assert_eq!(RoomValue::parse(&room.encode()), Some(room));
        assert_eq!(RoomValue::parse("1|2|3|4|0|60000|0|1"), None);
        assert_eq!(RoomValue::parse("1|2|3|4|0|60000|120"), None);
        assert_eq!(room_key(&ProductId::parse("p1").unwrap()), "p1#room");
    }

    #[test]
    fn a_pass_verifies_only_as_signed_for_its_product_and_life() {
        let p1 = ProductId::parse("p1").unwrap();
        let keys = [key("k2"), key("k1")];
        let signed = pass(Kind::Admission).sign(&key("k1"));
        assert_eq!(
            Pass::verify(&signed, &keys, Kind::Admission, &p1, T),
            Ok(pass(Kind::Admission))
        );
        // Every way a pass can be wrong, each named.
        let mut forged = signed.clone();
        let last = if forged.ends_with('0') { "1" } else { "0" };
        forged.replace_range(forged.len() - 1.., last);
        assert_eq!(
            Pass::verify(&forged, &keys, Kind::Admission, &p1, T),
            Err(PassError::Forged)
        );
        let place_moved = signed.replacen(&format!("{}", T - 1_234), &format!("{}", T - 99_999), 1);
        assert_eq!(
            Pass::verify(&place_moved, &keys, Kind::Admission, &p1, T),
            Err(PassError::Forged)
        );
        assert_eq!(
            Pass::verify(&signed, &[key("k2")], Kind::Admission, &p1, T),
            Err(PassError::UnknownKey("k1".into()))
        );
        assert_eq!(
            Pass::verify(&signed, &keys, Kind::Place, &p1, T),
            Err(PassError::WrongKind {
                wanted: Kind::Place,
                found: Kind::Admission
            })
        );
        assert_eq!(
            Pass::verify(
                &signed,
                &keys,
                Kind::Admission,
                &ProductId::parse("p2").unwrap(),
                T
            ),
            Err(PassError::OtherProduct("p1".into()))
        );
        assert_eq!(
            Pass::verify(&signed, &keys, Kind::Admission, &p1, T + 60_000),
            Err(PassError::Expired(T + 60_000))
        );
        assert_eq!(
            Pass::verify("p1.p1.1", &keys, Kind::Place, &p1, T),
            Err(PassError::Malformed("not seven dot-separated fields"))
        );
        // The same signature in capitals: not as signed.
        let (payload, tag) = signed.rsplit_once('.').unwrap();
        assert_eq!(
            Pass::verify(
                &format!("{payload}.{}", tag.to_uppercase()),
                &keys,
                Kind::Admission,
                &p1,
                T
            ),
            Err(PassError::Malformed("signature not lowercase hex"))
        );
        // Another secret under the same id: forged.
        let other = Key {
            id: "k1".into(),
            secret: b"another".to_vec(),
        };
        assert_eq!(
            Pass::verify(
                &pass(Kind::Admission).sign(&other),
                &keys,
                Kind::Admission,
                &p1,
                T
            ),
            Err(PassError::Forged)
        );
    }

    /// The vector edge/test/room.test.mjs checks too: both sides sign alike.
    #[test]
    fn a_place_signs_as_the_edge_signs_it() {
        assert_eq!(
            pass(Kind::Place).sign(&key("k1")),
            "p1.p1.1699999998766.00ff00ff00ff00ff.1700000060000.k1.ccb95705abb8b738f071295fceb07aca"
        );
    }
}
