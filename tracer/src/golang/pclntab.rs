//! A reader of Go's `.gopclntab`, the runtime's own table of functions, files and lines.
//! It survives `-ldflags='-s -w'` (the runtime needs it for tracebacks), so it names the
//! frames of stripped binaries too; blazesym 0.2.7 does not read it.
//!
//! The layout is the Go 1.18+ one (`runtime/symtab.go`, `pcHeader` and `_func`): a header,
//! then the function name table, the compilation-unit file table, the file name table, the
//! pc-value tables and the function table. Go 1.20 added `_func.startLine` after the fields
//! that name a function, so one reader covers Go 1.18 to 1.27; from Go 1.26 the header's
//! `textStart` is zero and entries count from the start of `.text` (`set_text_start`).
//!
//! Inlined calls are expanded as `runtime/symtab.go` and `symtabinl.go` do: the function's
//! `_PCDATA_InlTreeIndex` table gives, at a pc, the index of the innermost inlined call in its
//! inline tree (`_FUNCDATA_InlTree`, an offset from `moduledata.gofunc`, the `go:func.*`
//! symbol), or -1 in the function's own code; each tree entry names the inlined function and
//! the offset of an instruction of its caller (`parentPc`), where the walk goes on. Without
//! `gofunc` (see `set_gofunc`) or with an unreadable tree, a frame names only the function
//! the code was compiled into.

/// `pcHeader.magic` of Go 1.18–1.19 and of Go 1.20+.
const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;
/// `pcHeader` is 8 words after its first 8 bytes.
const HEADER_LEN: usize = 8 + 8 * 8;
/// Byte offsets of the `_func` fields used here.
const FUNC_NAME_OFF: usize = 4;
const FUNC_PCSP: usize = 16;
const FUNC_PCFILE: usize = 20;
const FUNC_PCLN: usize = 24;
const FUNC_NPCDATA: usize = 28;
const FUNC_CU_OFFSET: usize = 32;
/// `_func` is 40 bytes in Go 1.18–1.19 and 44 (with `startLine`) in Go 1.20+; its pcdata
/// offsets follow it, then its funcdata offsets.
const FUNC_LEN_GO118: usize = 40;
const FUNC_LEN_GO120: usize = 44;
/// `_func.funcID`, three bytes before `nfuncdata`.
const FUNC_ID_GO118: usize = 36;
const FUNC_ID_GO120: usize = 40;
/// `_func.nfuncdata`, its last byte.
const FUNC_NFUNCDATA_GO118: usize = 39;
const FUNC_NFUNCDATA_GO120: usize = 43;
/// `_PCDATA_InlTreeIndex` and `_FUNCDATA_InlTree` (`internal/abi/symtab.go`).
const PCDATA_INL_TREE_INDEX: u32 = 2;
const FUNCDATA_INL_TREE: u8 = 3;
/// `funcID_wrapper`: inlined wrappers (method value and interface wrappers) are elided from
/// tracebacks, as `runtime.Callers` does.
const FUNC_ID_WRAPPER: u8 = 21;
/// An inline tree deeper than this is taken as corrupt (the walk stops at the physical
/// function).
const MAX_INLINE_DEPTH: usize = 256;

/// The layout of `runtime.inlinedCall`, one entry of an inline tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InlinedCallLayout {
    len: usize,
    func_id: usize,
    /// Offset of the function name in the function name table.
    name_off: usize,
    /// Offset from the function entry of an instruction at the call site.
    parent_pc: usize,
}

impl InlinedCallLayout {
    /// Go 1.18–1.19: `{parent int16, funcID uint8, _ byte, file, line, func_, parentPc int32}`.
    const GO118: Self = Self { len: 20, func_id: 2, name_off: 12, parent_pc: 16 };
    /// Go 1.20+: `{funcID uint8, _ [3]byte, nameOff, parentPc, startLine int32}`.
    const GO120: Self = Self { len: 16, func_id: 0, name_off: 4, parent_pc: 8 };
}

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
    /// Go 1.20+ layouts of `_func` and `inlinedCall` (else Go 1.18–1.19).
    go120: bool,
    /// The bytes from `moduledata.gofunc` to the end of its section, where funcdata lives.
    gofunc: Option<&'a [u8]>,
}

/// Where one address lies: its function and, from the pc tables, file and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoLocation {
    pub function: String,
    /// Link-time entry address of the function the code was compiled into.
    pub entry: u64,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// An inlined call: the next location of the same address is its caller.
    pub inlined: bool,
}

/// The function table entry an address lies in.
#[derive(Clone, Copy)]
pub struct FuncAt {
    /// Offset of its `_func` in the table.
    func: usize,
    /// Link-time entry address.
    entry: u64,
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
            go120: magic == MAGIC_GO120,
            gofunc: None,
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

    /// Whether the header gave the address function entries are relative to: Go 1.26 left
    /// `pcHeader.textStart` zero (the runtime takes `moduledata.text` instead).
    pub fn has_text_start(&self) -> bool {
        self.text_start != 0
    }

    /// The link-time address function entries are relative to (`runtime.text`, the start
    /// of `.text`), where the header does not give it.
    pub fn set_text_start(&mut self, address: u64) {
        self.text_start = address;
    }

    /// The bytes from `moduledata.gofunc` to the end of its section: enables the expansion
    /// of inlined calls.
    pub fn set_gofunc(&mut self, bytes: &'a [u8]) {
        self.gofunc = Some(bytes);
    }

    /// `_func.funcID` of the function containing the link-time address `pc`.
    pub fn func_id(&self, pc: u64) -> Option<u8> {
        let at = self.func_at(pc)?;
        self.data.get(at.func + if self.go120 { FUNC_ID_GO120 } else { FUNC_ID_GO118 }).copied()
    }

    /// The `funcID` of the compiler's wrappers (method and `go` statement wrappers, which
    /// Go's tracebacks leave out). Its value moves as releases add special functions
    /// before it (21 in Go 1.19, 22 with `corostart`, …), but it always follows
    /// `runtime.systemstack_switch`'s: found from that function's, by a scan of the table.
    pub fn wrapper_func_id(&self) -> Option<u8> {
        (0..self.nfunc).find_map(|index| {
            let func_offset = read_u32(self.data, self.functab + 8 * index + 4)? as usize;
            let func = self.functab.checked_add(func_offset)?;
            if self.func_name(func)? != "runtime.systemstack_switch" {
                return None;
            }
            let id =
                self.data.get(func + if self.go120 { FUNC_ID_GO120 } else { FUNC_ID_GO118 })?;
            id.checked_add(1)
        })
    }

    /// The frames of the link-time address `pc`, innermost first: the calls inlined at `pc`,
    /// each with the file and line of its own code, then the function the code was compiled
    /// into. Empty if no function contains `pc`. Inline data that cannot be read leaves the
    /// frames read so far (logged).
    pub fn frames(&self, pc: u64) -> Vec<GoLocation> {
        let Some(at) = self.func_at(pc) else {
            return Vec::new();
        };
        let Some(name) = self.func_name(at.func) else {
            return Vec::new();
        };
        let mut frames = Vec::new();
        let mut tracepc = pc;
        if let Some(tree) = self.inline_tree(at.func) {
            let layout =
                if self.go120 { InlinedCallLayout::GO120 } else { InlinedCallLayout::GO118 };
            for _ in 0..MAX_INLINE_DEPTH {
                let Some(index) = self.pcdata_value(at, PCDATA_INL_TREE_INDEX, tracepc) else {
                    break;
                };
                let Ok(index) = usize::try_from(index) else {
                    // -1: the function's own code.
                    break;
                };
                let Some(call) = index
                    .checked_mul(layout.len)
                    .and_then(|at| tree.get(at..at.checked_add(layout.len)?))
                else {
                    log::debug!("{name} {pc:#x}: inline tree entry {index} out of bounds");
                    break;
                };
                let field = |offset: usize| read_u32(call, offset);
                let (Some(name_off), Some(parent_pc)) =
                    (field(layout.name_off), field(layout.parent_pc))
                else {
                    break;
                };
                let inlined_name = self
                    .funcnames
                    .checked_add(name_off as usize)
                    .and_then(|at| read_cstr(self.data, at));
                let Some(inlined_name) = inlined_name else {
                    log::debug!("{name} {pc:#x}: inline tree entry {index} has no name");
                    break;
                };
                if call[layout.func_id] != FUNC_ID_WRAPPER {
                    frames.push(self.location(at, inlined_name, tracepc, true));
                }
                // Back up to an instruction of the caller (`parentPc` is from the entry).
                tracepc = at.entry.wrapping_add(u64::from(parent_pc));
            }
        }
        frames.push(self.location(at, name, tracepc, false));
        frames
    }

    fn func_at(&self, pc: u64) -> Option<FuncAt> {
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
        Some(FuncAt { func, entry })
    }

    fn func_name(&self, func: usize) -> Option<&'a str> {
        let name_offset = read_u32(self.data, func + FUNC_NAME_OFF)? as usize;
        read_cstr(self.data, self.funcnames.checked_add(name_offset)?)
    }

    /// `function` at `pc` of the code of `at`, with the file and line the pc tables give.
    fn location(&self, at: FuncAt, function: &str, pc: u64, inlined: bool) -> GoLocation {
        let FuncAt { func, entry } = at;
        let field = |offset: usize| read_u32(self.data, func + offset);
        let line = field(FUNC_PCLN)
            .and_then(|pcln| self.pc_value(pcln, entry, pc))
            .and_then(|line| u32::try_from(line).ok());
        let file = field(FUNC_PCFILE).zip(field(FUNC_CU_OFFSET)).and_then(|(pcfile, cu_offset)| {
            let index = u32::try_from(self.pc_value(pcfile, entry, pc)?).ok()?;
            let cu_entry = (cu_offset.checked_add(index)? as usize)
                .checked_mul(4)
                .and_then(|at| self.cutab.checked_add(at))?;
            let file_offset = read_u32(self.data, cu_entry)?;
            if file_offset == u32::MAX {
                return None;
            }
            read_cstr(self.data, self.filetab.checked_add(file_offset as usize)?)
        });
        GoLocation {
            function: name_for_print(function),
            entry,
            file: file.map(str::to_owned),
            line,
            inlined,
        }
    }

    /// The value at `pc` of the function's pcdata table `table` (`runtime.pcdatavalue`).
    fn pcdata_value(&self, at: FuncAt, table: u32, pc: u64) -> Option<i64> {
        let npcdata = read_u32(self.data, at.func + FUNC_NPCDATA)?;
        if table >= npcdata {
            return None;
        }
        let header = if self.go120 { FUNC_LEN_GO120 } else { FUNC_LEN_GO118 };
        let offset = read_u32(self.data, at.func + header + 4 * table as usize)?;
        self.pc_value(offset, at.entry, pc)
    }

    /// The function's inline tree (`runtime.funcdata(f, _FUNCDATA_InlTree)`), from its start to
    /// the end of the funcdata section; `None` if it has none or `gofunc` is unknown.
    fn inline_tree(&self, func: usize) -> Option<&'a [u8]> {
        self.funcdata_of(func, FUNCDATA_INL_TREE)
    }

    /// The function's funcdata `index` (`runtime.funcdata`), from its start to the end of
    /// the funcdata section; `None` if it has none or `gofunc` is unknown.
    pub fn funcdata(&self, at: FuncAt, index: u8) -> Option<&'a [u8]> {
        self.funcdata_of(at.func, index)
    }

    /// [`Self::funcdata`] of the `_func` at offset `func` of the pclntab.
    fn funcdata_of(&self, func: usize, index: u8) -> Option<&'a [u8]> {
        let gofunc = self.gofunc?;
        let (header, nfuncdata_at) = if self.go120 {
            (FUNC_LEN_GO120, FUNC_NFUNCDATA_GO120)
        } else {
            (FUNC_LEN_GO118, FUNC_NFUNCDATA_GO118)
        };
        let nfuncdata = *self.data.get(func + nfuncdata_at)?;
        if index >= nfuncdata {
            return None;
        }
        let npcdata = read_u32(self.data, func + FUNC_NPCDATA)? as usize;
        let slot = func + header + 4 * npcdata.checked_add(usize::from(index))?;
        let offset = read_u32(self.data, slot)?;
        if offset == u32::MAX {
            return None;
        }
        let data = gofunc.get(offset as usize..);
        if data.is_none() {
            log::debug!("funcdata {index} at go:func.*+{offset:#x} is outside its section");
        }
        data
    }

    /// The function containing the link-time address `pc`, for `funcdata` and `pcdata`.
    pub fn function_at(&self, pc: u64) -> Option<FuncAt> {
        self.func_at(pc)
    }

    /// The value at the link-time address `pc` of the pcdata table `table` of the function
    /// `at` (`runtime.pcdatavalue`).
    pub fn pcdata(&self, at: FuncAt, table: u32, pc: u64) -> Option<i64> {
        self.pcdata_value(at, table, pc)
    }

    /// The size of the frame of the function containing the link-time address `pc`, at
    /// `pc`: how far its stack pointer is below the return address (`runtime.funcspdelta`,
    /// from the function's pcsp table). `None` outside any function.
    pub fn frame_size(&self, pc: u64) -> Option<u64> {
        let at = self.func_at(pc)?;
        let pcsp = read_u32(self.data, at.func + FUNC_PCSP)?;
        u64::try_from(self.pc_value(pcsp, at.entry, pc)?).ok()
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
            let start = self.text_start.checked_add(u64::from(entry))?;
            Some(start..self.text_start.checked_add(u64::from(end))?)
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
            value = value.wrapping_add(delta);
            let (pc_delta, len) = read_uvarint(self.data, position)?;
            position += len;
            // A wild table's deltas end past any target rather than wrap around it.
            pc = pc.saturating_add(pc_delta.saturating_mul(self.quantum));
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

/// A function's name as Go's own tracebacks and profiles print it: a generic function's
/// type arguments as `[...]` (`main.waitOn[...]`, not `main.waitOn[go.shape.string]`), so
/// that its frames match Go's (`runtime.funcNamePiecesForPrint`).
fn name_for_print(name: &str) -> String {
    match (name.find('['), name.rfind(']')) {
        (Some(open), Some(close)) if open < close => {
            format!("{}[...]{}", &name[..open], &name[close + 1..])
        }
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_functions_are_named_as_go_prints_them() {
        assert_eq!(name_for_print("main.waitOn[go.shape.string]"), "main.waitOn[...]");
        assert_eq!(
            name_for_print("main.(*Pool[go.shape.int]).Get.func1"),
            "main.(*Pool[...]).Get.func1"
        );
        assert_eq!(name_for_print("main.main.func3"), "main.main.func3");
        assert_eq!(name_for_print("odd]name[x"), "odd]name[x");
    }

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
            go120: false,
            gofunc: None,
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

    /// A real go1.19 build of the goroutines workload, normal or stripped, and its source.
    fn build_workload(stripped: bool) -> (std::path::PathBuf, String) {
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/workloads/go/goroutines.go");
        let dir = std::env::temp_dir().join(format!(
            "tracer-pclntab-{}-{}",
            std::process::id(),
            if stripped { "stripped" } else { "full" }
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let out = dir.join("goroutines");
        let mut cmd = std::process::Command::new("go");
        cmd.arg("build").arg("-o").arg(&out);
        if stripped {
            cmd.arg("-ldflags=-s -w");
        }
        let status = cmd
            .arg(&source)
            .env("GOCACHE", dir.join("gocache"))
            .env("HOME", &dir)
            .env("GO111MODULE", "off")
            .status()
            .unwrap_or_else(|e| panic!("go build: {e}"));
        assert!(status.success(), "go build {}: {status}", source.display());
        let text = std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("read source: {e}"));
        (out, text)
    }

    /// The 1-based line of `source` that is `text` once trimmed.
    fn line_of(source: &str, text: &str) -> u32 {
        let index = source.lines().position(|line| line.trim() == text);
        index.map(|index| index as u32 + 1).unwrap_or_else(|| panic!("no line {text:?}"))
    }

    /// Every pc of `function` whose frames expand an inlined call.
    fn check_inlined_frames(stripped: bool) {
        let (path, source) = build_workload(stripped);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let binary = crate::golang::binary::GoBinary::parse(&bytes)
            .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        assert_eq!(binary.stripped, stripped);
        let table = &binary.pclntab;
        assert!(table.gofunc.is_some(), "gofunc not found (stripped: {stripped})");
        let range = table
            .function_range("main.inlinedReceiver")
            .unwrap_or_else(|| panic!("no main.inlinedReceiver"));
        let expanded: Vec<Vec<GoLocation>> =
            range.map(|pc| table.frames(pc)).filter(|frames| frames.len() > 1).collect();
        assert!(!expanded.is_empty(), "no inlined call in main.inlinedReceiver");
        let receive = line_of(&source, "return <-ch");
        let call = line_of(&source, "awaitValue(ch)");
        let at_receive = expanded
            .iter()
            .find(|frames| frames[0].line == Some(receive))
            .unwrap_or_else(|| panic!("no pc at the receive: {expanded:#?}"));
        let names: Vec<(&str, Option<u32>, bool)> = at_receive
            .iter()
            .map(|frame| (frame.function.as_str(), frame.line, frame.inlined))
            .collect();
        assert_eq!(
            names,
            [("main.awaitValue", Some(receive), true), ("main.inlinedReceiver", Some(call), false)]
        );
        assert!(at_receive.iter().all(|frame| {
            frame.file.as_deref().is_some_and(|file| file.ends_with("goroutines.go"))
        }));
        assert_eq!(at_receive[0].entry, at_receive[1].entry, "both in the same code");

        // Without the funcdata, or with funcdata that does not hold the tree: the physical
        // function only.
        let pc = range_pc(table, at_receive);
        for gofunc in [None, Some(&[][..]), Some(&[0xff; 8][..])] {
            let mut degraded = Pclntab::parse(table.data).unwrap_or_else(|e| panic!("{e}"));
            degraded.gofunc = gofunc;
            let frames = degraded.frames(pc);
            assert_eq!(frames.len(), 1, "{frames:#?}");
            assert_eq!(frames[0].function, "main.inlinedReceiver");
            assert!(!frames[0].inlined);
        }
    }

    /// A pc whose frames are `frames` (searched again: frames do not keep their pc).
    fn range_pc(table: &Pclntab<'_>, frames: &[GoLocation]) -> u64 {
        let range = table.function_range("main.inlinedReceiver").unwrap_or(0..0);
        range
            .clone()
            .find(|&pc| table.frames(pc) == frames)
            .unwrap_or_else(|| panic!("no pc in {range:x?}"))
    }

    #[test]
    fn inlined_calls_expand_innermost_first() {
        check_inlined_frames(false);
    }

    #[test]
    fn inlined_calls_expand_in_a_stripped_binary() {
        check_inlined_frames(true);
    }
}
