//! WebAssembly custom sections, read at the byte level.
//!
//! `kwctl annotate` stores a policy's metadata in a custom section of the module, and
//! policy-server reads it back from there. A custom section is section id 0 followed by
//! its size and, inside, a name and opaque data; readers take the first one with the name
//! they look for, wherever it sits. (The writer below only builds test modules: modules
//! are annotated by kwctl.)

use crate::{Error, Result};

/// The module header: `\0asm` and binary format version 1.
const HEADER: [u8; 8] = *b"\0asm\x01\0\0\0";

/// Section id of custom sections.
const CUSTOM_SECTION_ID: u8 = 0;

/// Why bytes are not a module whose sections can be listed; each becomes
/// [`Error::ModuleFormat`] with its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    /// No binary module header (text format, a component, or not WebAssembly at all).
    NotAModule,
    /// A section or a custom section name runs past its end.
    Truncated { offset: usize },
    /// A LEB128 number is longer than a u32 allows.
    BadLength { offset: usize },
    /// A custom section name is not UTF-8.
    BadName { offset: usize },
}

impl From<Malformed> for Error {
    fn from(m: Malformed) -> Self {
        Error::ModuleFormat(match m {
            Malformed::NotAModule => {
                "not a WebAssembly binary module (no \\0asm version 1 header)".to_owned()
            }
            Malformed::Truncated { offset } => {
                format!("malformed module: section at byte {offset} is truncated")
            }
            Malformed::BadLength { offset } => {
                format!("malformed module: bad length at byte {offset}")
            }
            Malformed::BadName { offset } => {
                format!("malformed module: custom section name at byte {offset} is not UTF-8")
            }
        })
    }
}

/// One section of a module: its id and where it lies in the module bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Section {
    id: u8,
    /// From the id byte to the end of the payload.
    whole: (usize, usize),
    /// The payload (after the size).
    payload: (usize, usize),
}

/// Reads an unsigned LEB128 u32 at `at`; returns it and the position after it.
fn read_u32(bytes: &[u8], at: usize) -> Result<(u32, usize), Malformed> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let Some(&byte) = bytes.get(at + i) else {
            return Err(Malformed::Truncated { offset: at });
        };
        let bits = u32::from(byte & 0x7f);
        if i == 4 && bits > 0x0f {
            return Err(Malformed::BadLength { offset: at });
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, at + i + 1));
        }
    }
    Err(Malformed::BadLength { offset: at })
}

/// Appends `value` as unsigned LEB128.
#[cfg(test)]
fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sections(module: &[u8]) -> Result<Vec<Section>, Malformed> {
    if !module.starts_with(&HEADER) {
        return Err(Malformed::NotAModule);
    }
    let mut found = Vec::new();
    let mut at = HEADER.len();
    while at < module.len() {
        let id = module[at];
        let (size, payload_start) = read_u32(module, at + 1)?;
        let payload_end = usize::try_from(size)
            .ok()
            .and_then(|size| payload_start.checked_add(size))
            .filter(|end| *end <= module.len())
            .ok_or(Malformed::Truncated { offset: at })?;
        found.push(Section {
            id,
            whole: (at, payload_end),
            payload: (payload_start, payload_end),
        });
        at = payload_end;
    }
    Ok(found)
}

/// The name and data of a custom section's payload.
fn custom_parts<'m>(
    module: &'m [u8],
    section: &Section,
) -> Result<(&'m str, (usize, usize)), Malformed> {
    let (start, end) = section.payload;
    let (name_len, name_start) = read_u32(&module[..end], start)?;
    let name_end = usize::try_from(name_len)
        .ok()
        .and_then(|len| name_start.checked_add(len))
        .filter(|name_end| *name_end <= end)
        .ok_or(Malformed::Truncated {
            offset: section.whole.0,
        })?;
    let name = std::str::from_utf8(&module[name_start..name_end])
        .map_err(|_| Malformed::BadName { offset: name_start })?;
    Ok((name, (name_end, end)))
}

/// The data of the first custom section called `name`, as wasmparser-based readers
/// (policy-evaluator's `Metadata::from_contents`) find it; `None` when there is none.
pub fn custom_section<'m>(module: &'m [u8], name: &str) -> Result<Option<&'m [u8]>> {
    for section in sections(module)? {
        if section.id != CUSTOM_SECTION_ID {
            continue;
        }
        let (section_name, (start, end)) = custom_parts(module, &section)?;
        if section_name == name {
            return Ok(Some(&module[start..end]));
        }
    }
    Ok(None)
}

#[cfg(test)]
/// The module with every custom section called `name` removed and one new section
/// `name` holding `data` appended at the end. Replacing (rather than adding a second
/// section) matters: readers take the first section of that name, so re-annotating a
/// module must not leave the old metadata in front.
pub fn replace_custom_section(module: &[u8], name: &str, data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(module.len() + name.len() + data.len() + 16);
    out.extend_from_slice(&HEADER);
    for section in sections(module)? {
        if section.id == CUSTOM_SECTION_ID && custom_parts(module, &section)?.0 == name {
            continue;
        }
        out.extend_from_slice(&module[section.whole.0..section.whole.1]);
    }
    out.extend_from_slice(&encode_custom_section(name, data));
    Ok(out)
}

#[cfg(test)]
/// A custom section: id 0, payload size, then the name (length-prefixed) and the data.
fn encode_custom_section(name: &str, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(name.len() + data.len() + 5);
    write_u32(&mut payload, len_u32(name.len()));
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(data);
    let mut section = Vec::with_capacity(payload.len() + 6);
    section.push(CUSTOM_SECTION_ID);
    write_u32(&mut section, len_u32(payload.len()));
    section.extend_from_slice(&payload);
    section
}

#[cfg(test)]
/// Section sizes are u32 in the binary format; a module over 4 GiB cannot be loaded by
/// any engine anyway, so saturating keeps this total without a panic path.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// `(module (func))` plus a `name`-like custom section, written by hand: type, function
    /// and code sections, then a custom section "other" holding "x".
    fn small_module() -> Vec<u8> {
        let mut m = HEADER.to_vec();
        m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]); // type: () -> ()
        m.extend_from_slice(&[3, 2, 1, 0]); // function 0 has type 0
        m.extend_from_slice(&[10, 4, 1, 2, 0, 0x0b]); // code: empty body
        m.extend_from_slice(&encode_custom_section("other", b"x"));
        m
    }

    #[rstest]
    #[case::zero(0, &[0x00])]
    #[case::one_byte_max(127, &[0x7f])]
    #[case::two_bytes(128, &[0x80, 0x01])]
    #[case::three_bytes(624_485, &[0xe5, 0x8e, 0x26])]
    #[case::u32_max(u32::MAX, &[0xff, 0xff, 0xff, 0xff, 0x0f])]
    fn leb128_round_trip(#[case] value: u32, #[case] encoded: &[u8]) {
        let mut out = Vec::new();
        write_u32(&mut out, value);
        assert_eq!(out, encoded);
        assert_eq!(read_u32(encoded, 0), Ok((value, encoded.len())));
    }

    #[rstest]
    #[case::too_long(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], Malformed::BadLength { offset: 0 })]
    #[case::over_u32(&[0xff, 0xff, 0xff, 0xff, 0x1f], Malformed::BadLength { offset: 0 })]
    #[case::truncated(&[0x80], Malformed::Truncated { offset: 0 })]
    fn leb128_rejects(#[case] bytes: &[u8], #[case] error: Malformed) {
        assert_eq!(read_u32(bytes, 0), Err(error));
    }

    #[test]
    fn writes_then_reads_a_section_and_keeps_the_rest() -> Result<()> {
        let module = small_module();
        assert_eq!(custom_section(&module, "io.kubewarden.metadata")?, None);
        let annotated = replace_custom_section(&module, "io.kubewarden.metadata", b"{\"a\":1}")?;
        assert_eq!(
            custom_section(&annotated, "io.kubewarden.metadata")?,
            Some(&b"{\"a\":1}"[..])
        );
        assert!(
            annotated.starts_with(&module),
            "the original bytes come first"
        );
        assert_eq!(custom_section(&annotated, "other")?, Some(&b"x"[..]));
        Ok(())
    }

    #[test]
    fn replacing_leaves_one_section_with_the_new_data() -> Result<()> {
        let once = replace_custom_section(&small_module(), "meta", b"old")?;
        let twice = replace_custom_section(&once, "meta", b"new")?;
        assert_eq!(custom_section(&twice, "meta")?, Some(&b"new"[..]));
        let count = sections(&twice)
            .map_err(Error::from)?
            .iter()
            .filter(|s| s.id == 0 && custom_parts(&twice, s).map(|p| p.0) == Ok("meta"))
            .count();
        assert_eq!(count, 1);
        assert_eq!(twice.len(), once.len());
        Ok(())
    }

    #[test]
    fn first_section_of_a_name_wins() -> Result<()> {
        let mut module = small_module();
        module.extend_from_slice(&encode_custom_section("meta", b"first"));
        module.extend_from_slice(&encode_custom_section("meta", b"second"));
        assert_eq!(custom_section(&module, "meta")?, Some(&b"first"[..]));
        Ok(())
    }

    #[test]
    fn large_sections_use_multi_byte_sizes() -> Result<()> {
        let data = vec![b'x'; 70_000];
        let annotated = replace_custom_section(&small_module(), "big", &data)?;
        assert_eq!(custom_section(&annotated, "big")?, Some(&data[..]));
        Ok(())
    }

    #[rstest]
    #[case::text_format(b"(module)".to_vec(), Malformed::NotAModule)]
    #[case::component(b"\0asm\x0d\0\x01\0".to_vec(), Malformed::NotAModule)]
    #[case::empty(Vec::new(), Malformed::NotAModule)]
    #[case::section_past_the_end({ let mut m = HEADER.to_vec(); m.extend_from_slice(&[1, 9, 0]); m },
        Malformed::Truncated { offset: 8 })]
    #[case::name_past_the_section({ let mut m = HEADER.to_vec(); m.extend_from_slice(&[0, 2, 5, b'a']); m },
        Malformed::Truncated { offset: 8 })]
    #[case::name_not_utf8({ let mut m = HEADER.to_vec(); m.extend_from_slice(&[0, 2, 1, 0xff]); m },
        Malformed::BadName { offset: 11 })]
    fn malformed_modules_are_refused(#[case] module: Vec<u8>, #[case] error: Malformed) {
        let want = Error::from(error).to_string();
        match custom_section(&module, "meta") {
            Err(e @ Error::ModuleFormat(_)) => assert_eq!(e.to_string(), want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
        match replace_custom_section(&module, "meta", b"") {
            Err(e @ Error::ModuleFormat(_)) => assert_eq!(e.to_string(), want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }
}
