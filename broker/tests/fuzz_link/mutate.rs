//! Mutations of one whole packet: some keep its framing so the decoder sees
//! the damage, some break the framing itself.

use tributary_wire::{write_varint, FixedHeader};

use super::rng::Rng;

/// `packet` with one mutation applied.
pub fn mutate(rng: &mut Rng, packet: Vec<u8>) -> Vec<u8> {
    let Ok(Some(header)) = FixedHeader::peek(&packet) else {
        return flip_bits(rng, packet);
    };
    let first = header.byte1;
    let body = packet.get(header.header_len..).unwrap_or_default().to_vec();
    match rng.below(10) {
        // Damage inside a well-framed packet: the decoder's problem.
        0 | 1 => reframe(first, flip_bits(rng, body)),
        2 => {
            let at = rng.below(body.len() + 1);
            reframe(first, body[..at].to_vec())
        }
        3 => {
            let mut body = body;
            let at = rng.below(body.len() + 1);
            let len = 1 + rng.below(4);
            let noise = rng.bytes(len);
            body.splice(at..at, noise);
            reframe(first, body)
        }
        4 => {
            let len = body.len();
            reframe(first, rng.bytes(len))
        }
        // The first byte: another type, or other flags.
        5 => {
            let first = if rng.one_in(2) {
                first ^ (1 << rng.below(4))
            } else {
                rng.byte()
            };
            reframe(first, body)
        }
        // The framing itself.
        6 => {
            // Cut short: the remaining length swallows what follows.
            let at = rng.below(packet.len());
            packet[..at].to_vec()
        }
        7 => {
            // A remaining length a little off.
            let len = (body.len() as isize + rng.below(7) as isize - 3).max(0) as usize;
            let mut out = vec![first];
            write_varint(len, &mut out);
            out.extend(body);
            out
        }
        8 if body.len() < 16_384 => {
            // A remaining length in more bytes than needed.
            let mut out = vec![first];
            let len = body.len();
            out.extend([(len % 128) as u8 | 0x80, (len / 128) as u8 | 0x80, 0x00]);
            out.extend(body);
            out
        }
        _ => flip_bits(rng, packet),
    }
}

fn reframe(first: u8, body: Vec<u8>) -> Vec<u8> {
    tributary_wire::packet(first, &body)
}

fn flip_bits(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(bytes.len());
        bytes[at] ^= 1 << rng.below(8);
    }
    bytes
}
