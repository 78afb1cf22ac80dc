//! Code objects and strings: a frame's function, file and line, read from the target.

use std::collections::HashMap;

use super::layout::{BYTES_DATA, Layout, UNICODE_LENGTH, UNICODE_STATE, VAR_SIZE};
use crate::memory::{Memory, word};

/// Longest name or file name read; longer ones are cut.
const MAX_STRING: u64 = 4096;
/// Longest line table read (a 10,000-line function has about 40 KiB).
const MAX_LINE_TABLE: u64 = 256 << 10;

/// What a code object names: read once per code object and kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    pub qualname: String,
    pub filename: String,
    pub first_line: u32,
    line_table: Vec<u8>,
    /// `co_argcount` and the names of its locals (arguments first).
    pub argcount: u32,
    pub local_names: Vec<String>,
}

impl CodeInfo {
    /// The line being run at `instruction` (the address of the current code unit).
    pub fn line_at(&self, code_address: u64, layout: &Layout, instruction: u64) -> Option<u32> {
        let offset = instruction.checked_sub(code_address + layout.code.code_start)?;
        line_for_offset(&self.line_table, self.first_line, offset)
    }
}

/// Code objects by address, read on first sight. A code object freed and another put at
/// its address is told apart by its name and file pointers.
#[derive(Default)]
pub struct CodeCache {
    by_address: HashMap<u64, (CodeIdentity, std::sync::Arc<CodeInfo>)>,
}

/// The pointers that would change if the address held another code object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CodeIdentity {
    qualname: u64,
    filename: u64,
    line_table: u64,
}

impl CodeCache {
    pub fn get(
        &mut self,
        memory: &Memory,
        layout: &Layout,
        address: u64,
    ) -> Option<std::sync::Arc<CodeInfo>> {
        let mut header = vec![0u8; layout.code.code_start as usize];
        memory.read_exact(address, &mut header).ok()?;
        let at = |offset: u64| word(&header, offset as usize);
        let identity = CodeIdentity {
            qualname: at(layout.code.qualname),
            filename: at(layout.code.filename),
            line_table: at(layout.code.linetable),
        };
        if let Some((known, info)) = self.by_address.get(&address)
            && *known == identity
        {
            return Some(info.clone());
        }
        let int = |offset: u64| at(offset) as u32;
        let names_tuple = at(layout.code.localsplusnames);
        let local_count = int(layout.code.nlocalsplus).min(256) as usize;
        let info = std::sync::Arc::new(CodeInfo {
            qualname: read_str(memory, layout, identity.qualname)?,
            filename: read_str(memory, layout, identity.filename)?,
            first_line: int(layout.code.firstlineno),
            line_table: read_bytes(memory, identity.line_table).unwrap_or_default(),
            argcount: int(layout.code.argcount),
            local_names: read_tuple(memory, names_tuple, local_count)
                .iter()
                .map(|&name| read_str(memory, layout, name).unwrap_or_default())
                .collect(),
        });
        self.by_address.insert(address, (identity, info.clone()));
        Some(info)
    }
}

/// The first `limit` items of a tuple.
pub fn read_tuple(memory: &Memory, tuple: u64, limit: usize) -> Vec<u64> {
    let mut head = [0u8; 24];
    if tuple == 0 || memory.read_exact(tuple, &mut head).is_err() {
        return Vec::new();
    }
    let len = (word(&head, VAR_SIZE as usize) as usize).min(limit);
    let mut items = vec![0u8; len * 8];
    if memory.read_exact(tuple + super::layout::TUPLE_ITEMS, &mut items).is_err() {
        return Vec::new();
    }
    (0..len).map(|index| word(&items, index * 8)).collect()
}

/// A `bytes` object's contents.
fn read_bytes(memory: &Memory, address: u64) -> Option<Vec<u8>> {
    let mut head = [0u8; 24];
    memory.read_exact(address, &mut head).ok()?;
    let len = word(&head, VAR_SIZE as usize);
    if len > MAX_LINE_TABLE {
        return None;
    }
    let mut bytes = vec![0u8; len as usize];
    memory.read_exact(address + BYTES_DATA, &mut bytes).ok()?;
    Some(bytes)
}

/// A `str` object's text (compact strings: every name and file name the compiler makes).
pub fn read_str(memory: &Memory, layout: &Layout, address: u64) -> Option<String> {
    if address == 0 {
        return None;
    }
    let mut head = [0u8; 40];
    memory.read_exact(address, &mut head).ok()?;
    let length = word(&head, UNICODE_LENGTH as usize).min(MAX_STRING);
    let state = u32::from_le_bytes(head[UNICODE_STATE as usize..][..4].try_into().ok()?);
    let kind = (state >> 2) & 7;
    let compact = state >> 5 & 1 == 1;
    let ascii = state >> 6 & 1 == 1;
    if !compact || !matches!(kind, 1 | 2 | 4) {
        return None;
    }
    let data = if ascii { layout.ascii_data } else { layout.compact_data };
    let mut bytes = vec![0u8; (length * u64::from(kind)) as usize];
    memory.read_exact(address + data, &mut bytes).ok()?;
    Some(match kind {
        1 => bytes.iter().map(|&byte| char::from(byte)).collect(),
        2 => char::decode_utf16(bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])))
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    })
}

/// The line of the instruction `offset` bytes into the code, from the location table
/// (`co_linetable`, PEP 626; one format from 3.11 to 3.13, `Objects/locations.md`).
/// `None` where the instruction has no line (or the table ends before it).
pub fn line_for_offset(table: &[u8], first_line: u32, offset: u64) -> Option<u32> {
    let mut line = i64::from(first_line);
    let mut start = 0u64;
    let mut at = 0usize;
    while at < table.len() {
        let head = table[at];
        if head & 0x80 == 0 {
            return None; // not at an entry's start: a table we misread
        }
        at += 1;
        let code = (head >> 3) & 15;
        let end = start + ((u64::from(head & 7) + 1) * 2);
        let delta = match code {
            // No location.
            15 => 0,
            // Long form: line delta, end line, column, end column.
            14 => {
                let delta = read_signed_varint(table, &mut at)?;
                for _ in 0..3 {
                    read_varint(table, &mut at)?;
                }
                delta
            }
            // No column: the line delta alone.
            13 => read_signed_varint(table, &mut at)?,
            // One line, delta 0..2, then column and end column bytes.
            10..=12 => {
                at += 2;
                i64::from(code - 10)
            }
            // Short form: same line, one column byte.
            _ => {
                at += 1;
                0
            }
        };
        // A corrupt table's deltas wrap rather than panic.
        line = line.wrapping_add(delta);
        if (start..end).contains(&offset) {
            return (code != 15 && line > 0).then_some(line as u32);
        }
        start = end;
    }
    None
}

/// 6 bits per byte, least significant first, bit 6 set while more follow.
fn read_varint(table: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = *table.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 63) << shift;
        if byte & 64 == 0 || shift > 56 {
            return Some(value);
        }
        shift += 6;
    }
}

/// A varint whose lowest bit is the sign.
fn read_signed_varint(table: &[u8], at: &mut usize) -> Option<i64> {
    let value = read_varint(table, at)?;
    let magnitude = (value >> 1) as i64;
    Some(if value & 1 == 1 { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `\ndef f():\n    x = 1\n\n    return x` on CPython 3.11: `f.__code__.co_linetable`,
    /// and `co_lines()` says (0, 2, 2), (2, 4, 3), (4, 6, 3), (6, 8, 5), (8, 10, 5).
    #[test]
    fn lines_from_a_real_location_table() {
        let table = b"\x80\x00\xd8\x08\t\x80A\xe0\x0b\x0c\x80H";
        let line = |offset| line_for_offset(table, 2, offset);
        let lines: Vec<_> = (0..6).map(|unit| line(unit * 2)).collect();
        assert_eq!(lines, [Some(2), Some(3), Some(3), Some(5), Some(5), None]);
    }

    #[test]
    fn long_and_no_column_forms_move_the_line_both_ways() {
        // Long form +20 (end line 0, columns 0, 0) for 1 unit; no-column -7 for 2 units;
        // no location for 1 unit.
        let table = [0x80 | (14 << 3), 40, 0, 0, 0, 0x80 | (13 << 3) | 1, 15, 0x80 | (15 << 3)];
        let line = |offset| line_for_offset(&table, 10, offset);
        assert_eq!(line(0), Some(30));
        assert_eq!(line(2), Some(23));
        assert_eq!(line(4), Some(23));
        assert_eq!(line(6), None);
    }

    #[test]
    fn varints_carry_six_bits_per_byte() {
        let mut at = 0;
        assert_eq!(read_varint(&[0x41, 0x02], &mut at), Some(1 | 2 << 6));
        assert_eq!(at, 2);
        let mut at = 0;
        assert_eq!(read_signed_varint(&[0x05], &mut at), Some(-2));
        // A table cut inside a varint.
        let mut at = 0;
        assert_eq!(read_varint(&[0x41], &mut at), None);
    }
}
