//! Signed envelopes: every message published on a topic.
//!
//! An [`Envelope`] carries its author's [`PeerId`], the [`TopicId`] (SHA-256
//! of the topic name with a domain prefix), a [`Channel`] (application
//! message, presence announcement or task-list operations), a sequence
//! number per `(author, topic, channel)`, the author's wall-clock timestamp
//! and the payload, with the author's Ed25519 signature over a canonical
//! encoding ([`Envelope::signing_bytes`]):
//!
//! ```text
//! "x0x-collab-envelope-v1\0" | version u8 | author [32] | topic [32]
//!   | channel u8 | seq u64 BE | timestamp_ms u64 BE | payload_len u32 BE | payload
//! ```
//!
//! The fixed-width layout does not depend on any serializer, so the bytes
//! signed are the same on every platform and in every release. The
//! [`MessageId`] is SHA-256 of a second domain prefix, the signed bytes and
//! the signature: it names one signed envelope, so duplicates are
//! recognised by id before any signature is checked.
//!
//! [`Verifier`] checks an envelope in this order and counts each rejection
//! under a stable name ([`EnvelopeStats::counters`]): version, payload
//! size, missing (all-zero) signature, signature, timestamp window, replay.
//! Replays are caught by a window per `(author, topic, channel)`: the
//! highest sequence number seen and the set of seen numbers within
//! `replay_window` below it; anything older than the window, or already in
//! it, is a replay. The number of windows is bounded (least recently used
//! go first); the timestamp window (`max_age`) bounds how old a message an
//! evicted window could let through.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use x0x_proto::identity::{SIGNATURE_LEN, Signature};
use x0x_proto::{Identity, PeerId};

use super::util::{SignatureCheck, hex, sha256, unhex};

/// The envelope format version, first byte of the encoded envelope and part
/// of the signed bytes.
pub const ENVELOPE_VERSION: u8 = 1;

/// Default largest payload accepted (64 KiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

const SIGN_DOMAIN: &[u8] = b"x0x-collab-envelope-v1\0";
const ID_DOMAIN: &[u8] = b"x0x-collab-message-id-v1\0";
const TOPIC_DOMAIN: &[u8] = b"x0x-collab-topic-v1\0";

macro_rules! hash_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name([u8; 32]);

        impl $name {
            /// From raw bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The first 8 hex characters, for logs.
            pub fn short(&self) -> String {
                hex(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, ParseIdError> {
                unhex::<32>(s).map(Self).ok_or(ParseIdError)
            }
        }
    };
}

/// Why a string is not a 64-hex-character id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 hex characters")]
pub struct ParseIdError;

hash_id!(
    /// A topic, named by SHA-256 of its name (with a domain prefix).
    TopicId
);
hash_id!(
    /// The id of one signed envelope: SHA-256 of its signed bytes and signature.
    MessageId
);

impl TopicId {
    /// The topic id of the topic named `name`.
    pub fn new(name: &str) -> Self {
        Self(sha256(&[TOPIC_DOMAIN, name.as_bytes()]))
    }

    /// A topic id derived from this one for a sub-purpose (e.g. the scope
    /// of presence announcements sent directly to peers).
    pub fn derive(&self, purpose: &str) -> Self {
        Self(sha256(&[TOPIC_DOMAIN, &self.0, b"/", purpose.as_bytes()]))
    }
}

/// What an envelope's payload is, so one topic overlay carries application
/// messages, presence and task-list operations without confusing them. Part
/// of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Channel {
    /// Bytes published by the application (`Agent::publish`).
    App = 0,
    /// A presence announcement ([`crate::collab::presence`]).
    Presence = 1,
    /// A batch of task-list operations ([`crate::collab::crdt`]).
    Tasks = 2,
}

/// A signed message on a topic. Build with [`Envelope::sign`]; check
/// received ones with [`Verifier`] (the fields of a received envelope are
/// untrusted until then).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version ([`ENVELOPE_VERSION`]).
    pub version: u8,
    /// The author, whose key signed the envelope.
    pub author: PeerId,
    /// The topic it was published on.
    pub topic: TopicId,
    /// What the payload is.
    pub channel: Channel,
    /// Sequence number per `(author, topic, channel)`, increasing.
    pub seq: u64,
    /// The author's wall clock at publication, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The payload.
    #[serde(with = "serde_bytes_buf")]
    pub payload: Bytes,
    /// The author's Ed25519 signature over [`Envelope::signing_bytes`].
    pub signature: Signature,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("author", &self.author)
            .field("topic", &self.topic)
            .field("channel", &self.channel)
            .field("seq", &self.seq)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Envelope {
    /// A new envelope signed by `identity`.
    pub fn sign(
        identity: &Identity,
        topic: TopicId,
        channel: Channel,
        seq: u64,
        timestamp_ms: u64,
        payload: Bytes,
    ) -> Self {
        let mut env = Self {
            version: ENVELOPE_VERSION,
            author: identity.peer_id(),
            topic,
            channel,
            seq,
            timestamp_ms,
            payload,
            signature: Signature([0; SIGNATURE_LEN]),
        };
        env.signature = identity.sign(&env.signing_bytes());
        env
    }

    /// The canonical bytes the author signs (see the module docs).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SIGN_DOMAIN.len() + 90 + self.payload.len());
        b.extend_from_slice(SIGN_DOMAIN);
        b.push(self.version);
        b.extend_from_slice(self.author.as_bytes());
        b.extend_from_slice(self.topic.as_bytes());
        b.push(self.channel as u8);
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        b.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.payload);
        b
    }

    /// The message id: SHA-256 of a domain prefix, the signed bytes and the signature.
    pub fn id(&self) -> MessageId {
        MessageId(sha256(&[
            ID_DOMAIN,
            &self.signing_bytes(),
            &self.signature.0,
        ]))
    }

    /// The id and the signed bytes, computed once.
    fn id_and_signing_bytes(&self) -> (MessageId, Vec<u8>) {
        let sb = self.signing_bytes();
        (MessageId(sha256(&[ID_DOMAIN, &sb, &self.signature.0])), sb)
    }

    /// Encode on its own (postcard; the first byte is the version).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("envelope encoding cannot fail")
    }

    /// Decode bytes made by [`Envelope::to_bytes`]. Checks the version and
    /// that nothing trails; does not check the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Rejection> {
        match bytes.first() {
            None => return Err(Rejection::Malformed),
            Some(&v) if v != ENVELOPE_VERSION => return Err(Rejection::Version),
            _ => {}
        }
        match postcard::take_from_bytes::<Self>(bytes) {
            Ok((env, [])) => Ok(env),
            _ => Err(Rejection::Malformed),
        }
    }
}

/// Why an envelope was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejection {
    /// Could not be decoded.
    #[error("malformed envelope")]
    Malformed,
    /// Unknown format version.
    #[error("unsupported envelope version")]
    Version,
    /// Payload over the configured maximum.
    #[error("payload too large")]
    Oversize,
    /// No signature (all zero bytes).
    #[error("unsigned envelope")]
    Unsigned,
    /// The signature is not the author's over these bytes.
    #[error("bad signature")]
    BadSignature,
    /// Published on another topic than the one it arrived on.
    #[error("envelope for another topic")]
    WrongTopic,
    /// Sequence number already seen, or below the replay window.
    #[error("replayed envelope")]
    Replay,
    /// Timestamp older than the accepted age.
    #[error("envelope too old")]
    TooOld,
    /// Timestamp too far in the receiver's future.
    #[error("envelope from the future")]
    FromFuture,
}

/// Counters of envelopes accepted and rejected, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvelopeStats {
    /// Envelopes that passed every check.
    pub accepted: u64,
    /// Undecodable bytes.
    pub malformed: u64,
    /// Unknown version.
    pub version: u64,
    /// Payload too large.
    pub oversize: u64,
    /// All-zero signature.
    pub unsigned: u64,
    /// Signature does not verify.
    pub bad_signature: u64,
    /// Topic differs from the overlay's.
    pub wrong_topic: u64,
    /// Replayed sequence number.
    pub replay: u64,
    /// Timestamp too old.
    pub too_old: u64,
    /// Timestamp too far ahead.
    pub from_future: u64,
}

impl EnvelopeStats {
    /// Count one rejection.
    pub fn count(&mut self, r: Rejection) {
        *match r {
            Rejection::Malformed => &mut self.malformed,
            Rejection::Version => &mut self.version,
            Rejection::Oversize => &mut self.oversize,
            Rejection::Unsigned => &mut self.unsigned,
            Rejection::BadSignature => &mut self.bad_signature,
            Rejection::WrongTopic => &mut self.wrong_topic,
            Rejection::Replay => &mut self.replay,
            Rejection::TooOld => &mut self.too_old,
            Rejection::FromFuture => &mut self.from_future,
        } += 1;
    }

    /// Every counter with its stable metric name.
    pub fn counters(&self) -> [(&'static str, u64); 10] {
        [
            ("envelope_accepted", self.accepted),
            ("envelope_rejected_malformed", self.malformed),
            ("envelope_rejected_version", self.version),
            ("envelope_rejected_oversize", self.oversize),
            ("envelope_rejected_unsigned", self.unsigned),
            ("envelope_rejected_bad_signature", self.bad_signature),
            ("envelope_rejected_wrong_topic", self.wrong_topic),
            ("envelope_rejected_replay", self.replay),
            ("envelope_rejected_too_old", self.too_old),
            ("envelope_rejected_from_future", self.from_future),
        ]
    }

    /// Total rejections.
    pub fn rejected(&self) -> u64 {
        self.counters()[1..].iter().map(|(_, n)| n).sum()
    }
}

/// Limits applied by a [`Verifier`].
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Largest payload accepted, in bytes.
    pub max_payload: usize,
    /// How many sequence numbers below the highest seen are still accepted
    /// (out-of-order delivery), per `(author, topic, channel)`.
    pub replay_window: u64,
    /// Most replay windows kept; the least recently used are forgotten.
    pub max_windows: usize,
    /// Oldest timestamp accepted, relative to the receiver's clock (ms);
    /// `None` accepts any age.
    pub max_age_ms: Option<u64>,
    /// How far ahead of the receiver's clock a timestamp may be (ms).
    pub max_future_ms: u64,
    /// The signature check.
    pub signature_check: SignatureCheck,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            replay_window: 4096,
            max_windows: 16 * 1024,
            max_age_ms: Some(10 * 60 * 1000),
            max_future_ms: 5 * 60 * 1000,
            signature_check: SignatureCheck::default(),
        }
    }
}

#[derive(Debug)]
struct ReplayWindow {
    highest: u64,
    /// Seen numbers in `(highest - window, highest]`.
    seen: BTreeSet<u64>,
    last_used: u64,
}

/// Checks envelopes: signature, size, timestamp and replay (see the module docs).
#[derive(Debug)]
pub struct Verifier {
    config: VerifierConfig,
    windows: HashMap<(PeerId, TopicId, Channel), ReplayWindow>,
    tick: u64,
    stats: EnvelopeStats,
}

impl Verifier {
    /// A verifier with these limits.
    pub fn new(config: VerifierConfig) -> Self {
        Self {
            config,
            windows: HashMap::new(),
            tick: 0,
            stats: EnvelopeStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &EnvelopeStats {
        &self.stats
    }

    /// The limits.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Decode and verify. Every failure is counted.
    pub fn decode_and_verify(&mut self, bytes: &[u8], now_ms: u64) -> Result<Envelope, Rejection> {
        if bytes.len() > self.config.max_payload + 256 {
            self.stats.count(Rejection::Oversize);
            return Err(Rejection::Oversize);
        }
        let env = Envelope::from_bytes(bytes).inspect_err(|r| self.stats.count(*r))?;
        self.verify(&env, now_ms)?;
        Ok(env)
    }

    /// Verify an envelope received on `expected_topic` (when given) at the
    /// receiver's wall-clock time `now_ms`. On success the sequence number
    /// is recorded, so the same envelope verifies only once.
    pub fn verify_on(
        &mut self,
        env: &Envelope,
        expected_topic: Option<TopicId>,
        now_ms: u64,
    ) -> Result<MessageId, Rejection> {
        let r = self.check(env, expected_topic, now_ms);
        match r {
            Ok(_) => self.stats.accepted += 1,
            Err(e) => self.stats.count(e),
        }
        r
    }

    /// [`Verifier::verify_on`] without a topic check.
    pub fn verify(&mut self, env: &Envelope, now_ms: u64) -> Result<MessageId, Rejection> {
        self.verify_on(env, None, now_ms)
    }

    fn check(
        &mut self,
        env: &Envelope,
        expected_topic: Option<TopicId>,
        now_ms: u64,
    ) -> Result<MessageId, Rejection> {
        if env.version != ENVELOPE_VERSION {
            return Err(Rejection::Version);
        }
        if env.payload.len() > self.config.max_payload {
            return Err(Rejection::Oversize);
        }
        if expected_topic.is_some_and(|t| t != env.topic) {
            return Err(Rejection::WrongTopic);
        }
        if env.signature.0 == [0; SIGNATURE_LEN] {
            return Err(Rejection::Unsigned);
        }
        let (id, signed) = env.id_and_signing_bytes();
        if !self
            .config
            .signature_check
            .check(&env.author, &signed, &env.signature)
        {
            return Err(Rejection::BadSignature);
        }
        if env.timestamp_ms > now_ms.saturating_add(self.config.max_future_ms) {
            return Err(Rejection::FromFuture);
        }
        if let Some(max_age) = self.config.max_age_ms
            && env.timestamp_ms < now_ms.saturating_sub(max_age)
        {
            return Err(Rejection::TooOld);
        }
        self.record(env.author, env.topic, env.channel, env.seq)?;
        Ok(id)
    }

    fn record(
        &mut self,
        author: PeerId,
        topic: TopicId,
        channel: Channel,
        seq: u64,
    ) -> Result<(), Rejection> {
        self.tick += 1;
        let window = self.config.replay_window.max(1);
        let tick = self.tick;
        if !self.windows.contains_key(&(author, topic, channel))
            && self.windows.len() >= self.config.max_windows
        {
            self.evict();
        }
        let w = self
            .windows
            .entry((author, topic, channel))
            .or_insert_with(|| ReplayWindow {
                highest: 0,
                seen: BTreeSet::new(),
                last_used: tick,
            });
        w.last_used = tick;
        if w.seen.is_empty() && w.highest == 0 {
            w.highest = seq;
            w.seen.insert(seq);
            return Ok(());
        }
        if seq > w.highest {
            w.highest = seq;
            let floor = seq.saturating_sub(window);
            // Keep only numbers inside the window.
            w.seen = w.seen.split_off(&(floor + 1));
            w.seen.insert(seq);
            return Ok(());
        }
        if seq <= w.highest.saturating_sub(window) || !w.seen.insert(seq) {
            return Err(Rejection::Replay);
        }
        Ok(())
    }

    /// Forget the least recently used tenth of the windows.
    fn evict(&mut self) {
        let mut ticks: Vec<u64> = self.windows.values().map(|w| w.last_used).collect();
        ticks.sort_unstable();
        let cut = ticks[(ticks.len() / 10).min(ticks.len() - 1)];
        self.windows.retain(|_, w| w.last_used > cut);
    }

    /// Replay windows currently held.
    pub fn windows(&self) -> usize {
        self.windows.len()
    }
}

/// Serde for [`Bytes`] as a byte string (postcard: length + raw bytes).
pub(crate) mod serde_bytes_buf {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collab::testutil::identity;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000_000;

    fn env(id: &Identity, seq: u64, payload: &[u8]) -> Envelope {
        Envelope::sign(
            id,
            TopicId::new("t"),
            Channel::App,
            seq,
            NOW,
            Bytes::copy_from_slice(payload),
        )
    }

    #[test]
    fn valid_envelope_round_trips_and_verifies() {
        let a = identity(1);
        let e = env(&a, 1, b"hello");
        let bytes = e.to_bytes();
        assert_eq!(bytes[0], ENVELOPE_VERSION);
        let mut v = Verifier::new(VerifierConfig::default());
        let back = v.decode_and_verify(&bytes, NOW).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.id(), e.id());
        assert_eq!(v.stats().accepted, 1);
        assert_eq!(v.stats().rejected(), 0);
    }

    #[test]
    fn topic_ids_are_stable_and_distinct() {
        // A fixed value: the topic id must never change across releases.
        assert_eq!(
            TopicId::new("x0x").to_string(),
            hex(&sha256(&[b"x0x-collab-topic-v1\0", b"x0x"]))
        );
        assert_ne!(TopicId::new("a"), TopicId::new("b"));
        assert_ne!(TopicId::new("a").derive("p"), TopicId::new("a"));
        let t = TopicId::new("a");
        assert_eq!(t.to_string().parse::<TopicId>().unwrap(), t);
    }

    #[test]
    fn malformed_unsigned_wrongly_signed_oversize_and_replayed_are_dropped_and_counted() {
        let (a, b) = (identity(1), identity(2));
        let mut v = Verifier::new(VerifierConfig {
            max_payload: 100,
            ..VerifierConfig::default()
        });
        // Malformed: garbage and a truncated encoding.
        assert_eq!(
            v.decode_and_verify(&[ENVELOPE_VERSION, 1, 2, 3], NOW),
            Err(Rejection::Malformed)
        );
        let good = env(&a, 1, b"x").to_bytes();
        assert_eq!(
            v.decode_and_verify(&good[..good.len() - 1], NOW),
            Err(Rejection::Malformed)
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            v.decode_and_verify(&trailing, NOW),
            Err(Rejection::Malformed)
        );
        assert_eq!(v.decode_and_verify(&[], NOW), Err(Rejection::Malformed));
        // Version.
        let mut wrong_version = good.clone();
        wrong_version[0] = 9;
        assert_eq!(
            v.decode_and_verify(&wrong_version, NOW),
            Err(Rejection::Version)
        );
        // Unsigned.
        let mut unsigned = env(&a, 2, b"x");
        unsigned.signature = Signature([0; SIGNATURE_LEN]);
        assert_eq!(v.verify(&unsigned, NOW), Err(Rejection::Unsigned));
        // Signed by someone else than the author it names.
        let mut forged = env(&b, 3, b"x");
        forged.author = a.peer_id();
        assert_eq!(v.verify(&forged, NOW), Err(Rejection::BadSignature));
        // Tampered payload.
        let mut tampered = env(&a, 4, b"x");
        tampered.payload = Bytes::from_static(b"y");
        assert_eq!(v.verify(&tampered, NOW), Err(Rejection::BadSignature));
        // Oversize.
        assert_eq!(
            v.verify(&env(&a, 5, &[0; 101]), NOW),
            Err(Rejection::Oversize)
        );
        // Wrong topic.
        assert_eq!(
            v.verify_on(&env(&a, 6, b"x"), Some(TopicId::new("other")), NOW),
            Err(Rejection::WrongTopic)
        );
        // Timestamps.
        assert_eq!(
            v.verify(&env(&a, 7, b"x"), NOW - 11 * 60 * 1000),
            Err(Rejection::FromFuture)
        );
        assert_eq!(
            v.verify(&env(&a, 8, b"x"), NOW + 11 * 60 * 1000),
            Err(Rejection::TooOld)
        );
        // Replays: accepted once, then refused.
        let e = env(&a, 10, b"x");
        assert!(v.verify(&e, NOW).is_ok());
        assert_eq!(v.verify(&e, NOW), Err(Rejection::Replay));
        let s = *v.stats();
        assert_eq!(s.malformed, 4);
        assert_eq!(s.version, 1);
        assert_eq!(s.unsigned, 1);
        assert_eq!(s.bad_signature, 2);
        assert_eq!(s.oversize, 1);
        assert_eq!(s.wrong_topic, 1);
        assert_eq!(s.from_future, 1);
        assert_eq!(s.too_old, 1);
        assert_eq!(s.replay, 1);
        assert_eq!(s.accepted, 1);
        assert_eq!(s.rejected(), 13);
        let names: Vec<_> = s.counters().iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&"envelope_rejected_replay"));
    }

    #[test]
    fn replay_window_accepts_reordering_and_refuses_old_numbers() {
        let a = identity(1);
        let mut v = Verifier::new(VerifierConfig {
            replay_window: 10,
            ..VerifierConfig::default()
        });
        for seq in [5, 3, 4, 20, 15, 11] {
            assert!(v.verify(&env(&a, seq, b""), NOW).is_ok(), "seq {seq}");
        }
        // 10 is at the window's edge (20 - 10) and 3 fell out of it.
        assert_eq!(v.verify(&env(&a, 10, b""), NOW), Err(Rejection::Replay));
        assert_eq!(v.verify(&env(&a, 3, b"z"), NOW), Err(Rejection::Replay));
        assert_eq!(v.verify(&env(&a, 15, b"z"), NOW), Err(Rejection::Replay));
        assert!(v.verify(&env(&a, 12, b""), NOW).is_ok());
        // Another channel has its own window.
        let other = Envelope::sign(
            &a,
            TopicId::new("t"),
            Channel::Presence,
            3,
            NOW,
            Bytes::new(),
        );
        assert!(v.verify(&other, NOW).is_ok());
    }

    #[test]
    fn windows_are_bounded() {
        let mut v = Verifier::new(VerifierConfig {
            max_windows: 20,
            ..VerifierConfig::default()
        });
        let a = identity(1);
        for i in 0..100 {
            let e = Envelope::sign(
                &a,
                TopicId::new(&i.to_string()),
                Channel::App,
                1,
                NOW,
                Bytes::new(),
            );
            assert!(v.verify(&e, NOW).is_ok());
        }
        assert!(v.windows() <= 20);
    }

    proptest! {
        /// Random bytes never panic the decoder, and never verify.
        #[test]
        fn random_bytes_never_panic_or_verify(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut v = Verifier::new(VerifierConfig::default());
            prop_assert!(v.decode_and_verify(&bytes, NOW).is_err());
        }

        /// Flipping any byte of a valid encoding yields a rejection, never a panic.
        #[test]
        fn corrupted_envelopes_are_rejected(pos in 0usize..200, bit in 0u8..8) {
            let a = identity(1);
            let bytes = env(&a, 1, b"payload").to_bytes();
            let mut bad = bytes.clone();
            let pos = pos % bad.len();
            bad[pos] ^= 1 << bit;
            let mut v = Verifier::new(VerifierConfig::default());
            prop_assert!(v.decode_and_verify(&bad, NOW).is_err());
        }
    }
}
