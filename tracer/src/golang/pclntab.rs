//! A reader of Go's `.gopclntab`, the runtime's own table of functions, files and lines.
//! It survives `-ldflags='-s -w'` (the runtime needs it for tracebacks), so it names the
//! frames of stripped binaries too; blazesym 0.2.7 does not read it.
//!
//! The layout is the Go 1.18+ one (`runtime/symtab.go`, `pcHeader` and `_func`): a header,
//! then the function name table, the compilation-unit file table, the file name table, the
//! pc-value tables and the function table. Go 1.20 added `_func.startLine` after every field
//! read here, so one reader covers Go 1.18 to 1.22. Inlined calls are not expanded (that
//! needs the `go:func.*` funcdata): a frame names the function the code was compiled into.

/// `pcHeader.magic` of Go 1.18–1.19 and of Go 1.20+.
const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;
/// `pcHeader` is 8 words after its first 8 bytes.
const HEADER_LEN: usize = 8 + 8 * 8;
/// Byte offsets of the `_func` fields used here.
const FUNC_NAME_OFF: usize = 4;
const FUNC_PCFILE: usize = 20;
const FUNC_PCLN: usize = 24;
const FUNC_CU_OFFSET: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PclntabError {
    /// The table starts with an unknown magic (Go before 1.18, or not Go).
    #[error("unsupported .gopclntab magic {0:#x} (Go 1.18 or later is needed)")]
    Magic(u32),
    /// An offset points outside the table.
    #[error("truncated .gopclntab")]
    Truncated,
    /// Only 64-bit binaries are read.
    #[error(".gopclntab of a {0}-byte-pointer binary (only 64-bit is supported)")]
    PointerSize(u8),
}

/// The parsed table, borrowing the section's bytes.
pub struct Pclntab<'a> {
    data: &'a [u8],
    /// Instruction quantum: pc deltas are in these units (1 on amd64).
    quantum: u64,
    nfunc: usize,
    /// Address that function entry offsets are relative to (`runtime.text`, link time).
    text_start: u64,
    funcnames: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    /// `functab`: `nfunc + 1` pairs of (entry offset, `_func` offset from here).
    functab: usize,
}

/// Where one address lies: its function and, from the pc tables, file and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoLocation {
    pub function: String,
    /// Link-time entry address of the function.
    pub entry: u64,
    pub file: Option<String>,
    pub line: Option<u32>,
}

impl<'a> Pclntab<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, PclntabError> {
        let magic = read_u32(data, 0).ok_or(PclntabError::Truncated)?;
        if magic != MAGIC_GO118 && magic != MAGIC_GO120 {
            return Err(PclntabError::Magic(magic));
        }
        if data.len() < HEADER_LEN {
            return Err(PclntabError::Truncated);
        }
        let pointer_size = data[7];
        if pointer_size != 8 {
            return Err(PclntabError::PointerSize(pointer_size));
        }
        let word = |index: usize| read_u64(data, 8 + 8 * index).unwrap_or_default();
        let offset = |index: usize| usize::try_from(word(index)).unwrap_or(usize::MAX);
        let table = Self {
            data,
            quantum: u64::from(data[6].max(1)),
            nfunc: offset(0),
            text_start: word(2),
            funcnames: offset(3),
            cutab: offset(4),
            filetab: offset(5),
            pctab: offset(6),
            functab: offset(7),
        };
        let functab_end = table
            .nfunc
            .checked_add(1)
            .and_then(|entries| entries.checked_mul(8))
            .and_then(|len| len.checked_add(table.functab));
        if functab_end.is_none_or(|end| end > data.len()) {
            return Err(PclntabError::Truncated);
        }
        Ok(table)
    }

    /// The function containing the link-time address `pc` (look up a return address one
    /// byte back), with the file and line of `pc`.
    pub fn locate(&self, pc: u64) -> Option<GoLocation> {
        let offset = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        let entry_of = |index: usize| read_u32(self.data, self.functab + 8 * index);
        // The last function whose entry is at or below the address; the sentinel entry
        // (index nfunc) is the end of the text.
        if self.nfunc == 0 || offset >= entry_of(self.nfunc)? || offset < entry_of(0)? {
            return None;
        }
        let (mut low, mut high) = (0, self.nfunc);
        while high - low > 1 {
            let middle = (low + high) / 2;
            if entry_of(middle)? <= offset {
                low = middle;
            } else {
                high = middle;
            }
        }
        let func_offset = read_u32(self.data, self.functab + 8 * low + 4)? as usize;
        let func = self.functab.checked_add(func_offset)?;
        let entry = self.text_start + u64::from(entry_of(low)?);
        let name_offset = read_u32(self.data, func + FUNC_NAME_OFF)? as usize;
        let function = read_cstr(self.data, self.funcnames.checked_add(name_offset)?)?;
        let pcfile = read_u32(self.data, func + FUNC_PCFILE)?;
        let pcln = read_u32(self.data, func + FUNC_PCLN)?;
        let cu_offset = read_u32(self.data, func + FUNC_CU_OFFSET)?;
        let line = self
            .pc_value(pcln, entry, pc)
            .and_then(|line| u32::try_from(line).ok());
        let file = self.pc_value(pcfile, entry, pc).and_then(|index| {
            let index = u32::try_from(index).ok()?;
            let cu_entry = self.cutab + 4 * (cu_offset.checked_add(index)? as usize);
            let file_offset = read_u32(self.data, cu_entry)?;
            if file_offset == u32::MAX {
                return None;
            }
            read_cstr(self.data, self.filetab + file_offset as usize)
        });
        Some(GoLocation {
            function: function.to_owned(),
            entry,
            file: file.map(str::to_owned),
            line,
        })
    }

    /// The link-time address range of the function named `name` (a linear scan: used a
    /// few times per snapshot).
    pub fn function_range(&self, name: &str) -> Option<std::ops::Range<u64>> {
        (0..self.nfunc).find_map(|index| {
            let entry = read_u32(self.data, self.functab + 8 * index)?;
            let func_offset = read_u32(self.data, self.functab + 8 * index + 4)? as usize;
            let func = self.functab.checked_add(func_offset)?;
            let name_offset = read_u32(self.data, func + FUNC_NAME_OFF)? as usize;
            if read_cstr(self.data, self.funcnames.checked_add(name_offset)?)? != name {
                return None;
            }
            let end = read_u32(self.data, self.functab + 8 * (index + 1))?;
            Some(self.text_start + u64::from(entry)..self.text_start + u64::from(end))
        })
    }

    /// The value a pc-value table gives `target` (`runtime.pcvalue`): pairs of a zig-zag
    /// value delta and a pc delta, starting from -1 at the function's entry.
    fn pc_value(&self, table: u32, entry: u64, target: u64) -> Option<i64> {
        if table == 0 {
            return None;
        }
        let mut position = self.pctab.checked_add(table as usize)?;
        let mut value: i64 = -1;
        let mut pc = entry;
        let mut first = true;
        loop {
            let (value_delta, len) = read_uvarint(self.data, position)?;
            if value_delta == 0 && !first {
                return None;
            }
            first = false;
            position += len;
            // Zig-zag: the low bit is the sign.
            let delta = ((value_delta >> 1) as i64) ^ -((value_delta & 1) as i64);
            value += delta;
            let (pc_delta, len) = read_uvarint(self.data, position)?;
            position += len;
            pc += pc_delta * self.quantum;
            if target < pc {
                return Some(value);
            }
        }
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u64(data: &[u8], at: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn read_cstr(data: &[u8], at: usize) -> Option<&str> {
    let rest = data.get(at..)?;
    let end = rest.iter().position(|&byte| byte == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// An unsigned LEB128 varint and its length in bytes.
fn read_uvarint(data: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (index, &byte) in data.get(at..)?.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag() {
        assert_eq!(read_uvarint(&[0x05], 0), Some((5, 1)));
        assert_eq!(read_uvarint(&[0x96, 0x01], 0), Some((150, 2)));
        assert_eq!(read_uvarint(&[0x80], 0), None);
    }

    #[test]
    fn pc_values_step_until_past_the_target() {
        // A fake table: header words are irrelevant to pc_value except pctab (offset 0).
        let mut table = Pclntab {
            data: &[],
            quantum: 1,
            nfunc: 0,
            text_start: 0,
            funcnames: 0,
            cutab: 0,
            filetab: 0,
            pctab: 0,
            functab: 0,
        };
        // Offset 0 is "no table"; at 1: value -1+11=10 for 4 bytes, then +2 (zig-zag 4) for
        // 6 bytes, then the end.
        let bytes = [0u8, 22, 4, 4, 6, 0];
        table.data = &bytes;
        assert_eq!(table.pc_value(1, 0x100, 0x100), Some(10));
        assert_eq!(table.pc_value(1, 0x100, 0x103), Some(10));
        assert_eq!(table.pc_value(1, 0x100, 0x104), Some(12));
        assert_eq!(table.pc_value(1, 0x100, 0x10a), None);
    }
}
