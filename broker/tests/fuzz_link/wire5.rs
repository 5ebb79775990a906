//! Encoding pieces of MQTT packets the fuzz target builds: strings, binary
//! data and MQTT 5 properties. Lengths are varints from `tributary_wire`.

use tributary_wire::write_varint;

/// A UTF-8 string or binary field: two length bytes, then the bytes (any
/// bytes: invalid UTF-8 is part of the point). Longer than a u16 is cut.
pub fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(usize::from(u16::MAX))];
    out.extend((bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Binary data: encoded as a string is.
pub fn binary(out: &mut Vec<u8>, bytes: &[u8]) {
    string(out, bytes);
}

/// One property: its identifier, then its already-encoded value.
pub fn prop(out: &mut Vec<u8>, id: u8, value: &[u8]) {
    out.push(id);
    out.extend_from_slice(value);
}

/// A User Property (0x26): a name and a value.
pub fn user_property(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x26);
    string(out, name);
    string(out, value);
}

/// A property block: its length, then the properties.
pub fn properties(out: &mut Vec<u8>, props: &[u8]) {
    write_varint(props.len(), out);
    out.extend_from_slice(props);
}
