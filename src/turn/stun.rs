//! The STUN messages the guard reads and answers itself: decoding with every check the
//! guard relies on, the attributes a request must not carry, XOR-PEER-ADDRESS, and error
//! responses.

use std::net::{IpAddr, SocketAddr};

use stun::attributes::{
    ATTR_CHANNEL_NUMBER, ATTR_DATA, ATTR_DONT_FRAGMENT, ATTR_EVEN_PORT, ATTR_LIFETIME,
    ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_REQUESTED_ADDRESS_FAMILY,
    ATTR_REQUESTED_TRANSPORT, ATTR_RESERVATION_TOKEN, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
    AttrType,
};
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::integrity::MessageIntegrity;
use stun::message::{CLASS_ERROR_RESPONSE, Message, MessageType, Setter};

use super::guard::Verdict;

/// STUN's magic cookie, in every message since RFC 5389.
pub(super) const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Decodes a STUN message, or `None` for anything that is not one: short, wrong cookie,
/// wrong length, or attributes that do not parse.
pub(super) fn decode(data: &[u8]) -> Option<Message> {
    if data.len() < 20 || data[0] & 0xC0 != 0 {
        return None;
    }
    if u32::from_be_bytes([data[4], data[5], data[6], data[7]]) != MAGIC_COOKIE {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([data[2], data[3]]));
    if length + 20 != data.len() || length % 4 != 0 {
        return None;
    }
    let mut message = Message {
        raw: data.to_vec(),
        ..Default::default()
    };
    message.decode().ok()?;
    Some(message)
}

/// Comprehension-required attributes (below 0x8000) that no TURN request of ours carries.
pub(super) fn unknown_attributes(message: &Message) -> Vec<AttrType> {
    const KNOWN: [AttrType; 13] = [
        ATTR_USERNAME,
        ATTR_MESSAGE_INTEGRITY,
        ATTR_REALM,
        ATTR_NONCE,
        ATTR_LIFETIME,
        ATTR_XOR_PEER_ADDRESS,
        ATTR_DATA,
        ATTR_CHANNEL_NUMBER,
        ATTR_EVEN_PORT,
        ATTR_REQUESTED_TRANSPORT,
        ATTR_DONT_FRAGMENT,
        ATTR_RESERVATION_TOKEN,
        ATTR_REQUESTED_ADDRESS_FAMILY,
    ];
    let mut unknown: Vec<AttrType> = message
        .attributes
        .0
        .iter()
        .map(|attr| attr.typ)
        .filter(|typ| typ.0 < 0x8000 && !KNOWN.contains(typ))
        .collect();
    unknown.dedup();
    unknown
}

/// An XOR-PEER-ADDRESS value (RFC 8489 §14.2).
pub(super) fn xor_address(value: &[u8], transaction: &[u8; 12]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ 0x2112;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (value.get(1)?, value.len()) {
        (0x01, 8) => {
            let mut ip = [0u8; 4];
            for (i, byte) in ip.iter_mut().enumerate() {
                *byte = value[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            for (i, byte) in ip.iter_mut().enumerate() {
                let pad = if i < 4 { cookie[i] } else { transaction[i - 4] };
                *byte = value[4 + i] ^ pad;
            }
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        _ => None,
    }
}

/// An error response to `request`, signed with `key` when the request was authenticated.
pub(super) fn answer(
    request: &Message,
    code: ErrorCode,
    key: Option<&[u8]>,
    mut attributes: Vec<Box<dyn Setter>>,
) -> Verdict {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(Message {
            transaction_id: request.transaction_id,
            ..Default::default()
        }),
        Box::new(MessageType::new(request.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: Vec::new(),
        }),
    ];
    setters.append(&mut attributes);
    if let Some(key) = key {
        setters.push(Box::new(MessageIntegrity(key.to_vec())));
    }
    let mut response = Message::new();
    match response.build(&setters) {
        Ok(()) => Verdict::Answer(response.raw),
        Err(_) => Verdict::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::message::{CLASS_REQUEST, METHOD_ALLOCATE};

    #[test]
    fn xor_peer_addresses_decode_in_both_families() {
        // 192.0.2.1:32853 from RFC 5769's sample (XOR-MAPPED-ADDRESS, same encoding).
        let v4 = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        assert_eq!(
            xor_address(&v4, &[0; 12]),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        assert_eq!(xor_address(&v4[..7], &[0; 12]), None);
        assert_eq!(xor_address(&[0, 3, 0, 0, 0, 0, 0, 0], &[0; 12]), None);
        let transaction = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        // 2001:db8:1234:5678:11:2233:4455:6677 port 32853, RFC 5769 §2.3.
        let v6 = [
            0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
            0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        ];
        assert_eq!(
            xor_address(&v6, &transaction),
            Some(
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .unwrap()
            )
        );
    }

    #[test]
    fn anything_that_is_not_stun_decodes_to_nothing() {
        assert!(decode(&[]).is_none());
        assert!(decode(&[0; 19]).is_none());
        let mut header = [0u8; 20];
        header[1] = 0x01; // Binding request, but no magic cookie
        assert!(decode(&header).is_none());
        header[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        assert!(decode(&header).is_some());
        // Comprehension-optional attributes (0x8000 and up) are never "unknown".
        let mut optional = Message::new();
        optional
            .build(&[
                Box::new(stun::agent::TransactionId::new()),
                Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
                Box::new(stun::attributes::RawAttribute {
                    typ: AttrType(0x8000),
                    length: 4,
                    value: vec![0; 4],
                }),
                Box::new(stun::attributes::RawAttribute {
                    typ: AttrType(0x7fff),
                    length: 4,
                    value: vec![0; 4],
                }),
            ])
            .unwrap();
        assert_eq!(unknown_attributes(&optional), vec![AttrType(0x7fff)]);
        // Bytes after the message its length announces: not one datagram's message.
        let mut trailing = header.to_vec();
        trailing.extend_from_slice(&[0; 4]);
        assert!(decode(&trailing).is_none());
        header[3] = 4; // says one attribute follows, none does
        assert!(decode(&header).is_none());
    }
}
