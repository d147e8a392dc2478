//! What instances send each other on their channels: one type, read and written here only.
//!
//! An envelope is eight fields joined by newlines, the last one the frame (which may hold
//! newlines itself): `kind`, `to`, the receiving session's id, `from`, the sender's instance,
//! the sender's session id, the version of the receiver's record after the change, and the
//! frame for the receiver's socket. The Lua scripts write the same layout (`send` in
//! `lua/common.lua`). Several envelopes for one instance travel as one PUBLISH: `batch`, then
//! each envelope after its length in bytes.

/// One message from another instance (or from this one, for a probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Envelope<'a> {
    /// `offer`, `answer`, `decline`, `close`, `candidate`, `media`, `resume` (from a
    /// script); `direct-offer`, `direct-candidate` (straight from an instance's copy);
    /// `gone`, `taken`, `moved`, `hold` (record changes); `probe` (a heartbeat's own).
    pub kind: &'a str,
    pub to: &'a str,
    /// The receiving session; for a probe, its sequence number.
    pub sid: u64,
    pub from: &'a str,
    pub from_at: &'a str,
    pub from_sid: u64,
    pub ver: u64,
    pub frame: &'a str,
}

impl<'a> Envelope<'a> {
    /// A heartbeat's probe, published on this instance's own channel.
    pub fn probe(seq: u64) -> Envelope<'static> {
        Envelope {
            kind: "probe",
            sid: seq,
            ..Envelope::default()
        }
    }

    pub fn encode(&self) -> String {
        let Envelope {
            kind,
            to,
            sid,
            from,
            from_at,
            from_sid,
            ver,
            frame,
        } = self;
        format!("{kind}\n{to}\n{sid}\n{from}\n{from_at}\n{from_sid}\n{ver}\n{frame}")
    }

    /// Reads an envelope; missing fields are empty, numbers that do not parse are 0 (which
    /// matches no session and no newer version, so such an envelope changes nothing).
    pub fn decode(text: &'a str) -> Envelope<'a> {
        let mut parts = text.splitn(8, '\n');
        let mut field = || parts.next().unwrap_or_default();
        let number = |text: &str| text.parse().unwrap_or(0);
        Envelope {
            kind: field(),
            to: field(),
            sid: number(field()),
            from: field(),
            from_at: field(),
            from_sid: number(field()),
            ver: number(field()),
            frame: field(),
        }
    }
}

/// One PUBLISH payload: a single envelope as it is, several as `batch` and then each
/// envelope after its length in bytes.
pub(super) fn batch(envelopes: &[String]) -> String {
    if let [one] = envelopes {
        return one.clone();
    }
    let mut payload = String::from("batch\n");
    for envelope in envelopes {
        payload.push_str(&envelope.len().to_string());
        payload.push('\n');
        payload.push_str(envelope);
    }
    payload
}

/// The envelopes in one PUBLISH payload, in order. A batch cut short ends at the last whole
/// envelope.
pub(super) fn unbatch(payload: &str) -> Vec<&str> {
    let Some(mut rest) = payload.strip_prefix("batch\n") else {
        return vec![payload];
    };
    let mut envelopes = Vec::new();
    while let Some((len, after)) = rest.split_once('\n') {
        let Some(envelope) = len.parse::<usize>().ok().and_then(|len| after.get(..len)) else {
            break;
        };
        envelopes.push(envelope);
        rest = &after[envelope.len()..];
    }
    envelopes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Envelope<'static> {
        Envelope {
            kind: "offer",
            to: "Bob",
            sid: 42,
            from: "alice",
            from_at: "web.1-0a0b",
            from_sid: 7,
            ver: 3,
            frame: "{\"type\":\"offer\",\n\"sdp\":\"v=0\\r\\n\"}\nsecond line",
        }
    }

    #[test]
    fn an_envelope_reads_back_as_written_with_newlines_in_its_frame() {
        let text = offer().encode();
        assert_eq!(Envelope::decode(&text), offer());
    }

    #[test]
    fn the_layout_is_the_one_the_lua_scripts_write() {
        // `send` in lua/common.lua: table.concat({kind, to, sid, from, from_inst, from_sid,
        // ver, frame}, '\n').
        let written_by_lua = "answer\nalice\n9\nBob\ninst-b\n12\n5\n{\"type\":\"answer\"}";
        let envelope = Envelope::decode(written_by_lua);
        assert_eq!(
            envelope,
            Envelope {
                kind: "answer",
                to: "alice",
                sid: 9,
                from: "Bob",
                from_at: "inst-b",
                from_sid: 12,
                ver: 5,
                frame: "{\"type\":\"answer\"}",
            }
        );
        assert_eq!(envelope.encode(), written_by_lua);
    }

    #[test]
    fn a_probe_carries_its_sequence_number_and_nothing_else() {
        let text = Envelope::probe(17).encode();
        let probe = Envelope::decode(&text);
        assert_eq!(
            (probe.kind, probe.sid, probe.to, probe.frame),
            ("probe", 17, "", "")
        );
    }

    #[test]
    fn short_or_garbled_envelopes_read_as_empty_fields_and_zeros() {
        let envelope = Envelope::decode("gone\nbob\nnot-a-number");
        assert_eq!(
            envelope,
            Envelope {
                kind: "gone",
                to: "bob",
                ..Envelope::default()
            }
        );
    }

    #[test]
    fn a_batch_splits_into_its_envelopes_even_when_frames_hold_newlines() {
        let one = offer().encode();
        let two = Envelope {
            kind: "candidate",
            frame: "a\nb\n12\nc",
            ..offer()
        }
        .encode();
        assert_eq!(
            batch(std::slice::from_ref(&one)),
            one,
            "one envelope goes as it is"
        );
        let payload = batch(&[one.clone(), two.clone()]);
        assert!(payload.starts_with("batch\n"));
        assert_eq!(unbatch(&payload), vec![one.as_str(), two.as_str()]);
        assert_eq!(unbatch(&one), vec![one.as_str()]);
        // Cut short: the whole envelopes before the cut are kept, the rest dropped.
        let cut = &payload[..payload.len() - 3];
        assert_eq!(unbatch(cut), vec![one.as_str()]);
        assert_eq!(unbatch("batch\nxyz\nabc"), Vec::<&str>::new());
    }
}
