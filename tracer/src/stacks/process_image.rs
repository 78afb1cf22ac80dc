//! A snapshot of a process's executable file mappings, each file kept open.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write as _};
use std::ops::{Deref, Range};
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use object::read::elf::{ElfFile64, ProgramHeader as _};
use object::{Object as _, ObjectSection as _};

/// Page size on x86_64 Linux: mappings start at page-aligned file offsets.
const PAGE_SIZE: u64 = 4096;

/// How the kernel names the vDSO mapping in /proc/PID/maps.
const VDSO_NAME: &str = "[vdso]";

/// Suffix the kernel appends to the path of a mapped file that was unlinked.
const DELETED_SUFFIX: &str = " (deleted)";

/// Re-read a target's memory map at most this often when an address falls outside every
/// known module (a library loaded after tracing began): a stray address must not make us
/// re-read /proc/PID/maps per stack.
const MAP_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Module ids are unique across images so caches keyed by them never mix two processes.
static NEXT_MODULE_ID: AtomicU64 = AtomicU64::new(1);

/// Why a process image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The memory map of the process could not be read (it does not exist, or we lack access).
    #[error("cannot read /proc/{pid}/maps")]
    ReadMaps {
        pid: u32,
        #[source]
        source: io::Error,
    },
    /// A line of /proc/PID/maps is not in the format the kernel documents.
    #[error("malformed line in /proc/{pid}/maps: {line:?}")]
    MalformedMaps { pid: u32, line: String },
}

/// Why one mapping was left out of the image (logged, not fatal: the rest still unwinds).
#[derive(Debug, thiserror::Error)]
enum ModuleLoadError {
    /// Neither /proc/PID/map_files nor /proc/PID/root gave the mapped file.
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The file reachable by path is no longer the one mapped (replaced on disk).
    #[error("{path} was replaced on disk since it was mapped")]
    Replaced { path: String },
    /// The file could not be mapped into our memory.
    #[error("cannot map {path}")]
    Map {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The vDSO could not be copied out of the target.
    #[error("cannot copy the vdso of pid {pid}")]
    CopyVdso {
        pid: u32,
        #[source]
        source: io::Error,
    },
    /// The file is not a 64-bit ELF file.
    #[error("{path} is not a 64-bit ELF file")]
    NotElf {
        path: String,
        #[source]
        source: object::Error,
    },
    /// No PT_LOAD segment covers the mapped file offset, so the load bias is unknown.
    #[error("no loadable segment of {path} covers file offset {offset:#x}")]
    NoSegmentForOffset { path: String, offset: u64 },
}

/// Snapshot of a process's executable file mappings, with each file kept open (so a process
/// that exits, or a deleted file, still unwinds and symbolizes).
pub struct ProcessImage {
    pid: u32,
    /// Device and inode of /proc/PID/exe, to mark the main executable.
    exe_identity: Option<FileIdentity>,
    /// Sorted by `avma_range.start`, no two overlapping.
    modules: Vec<Module>,
    /// Every mapping as last read (data too), to say where a data address lies.
    mappings: Vec<MapsEntry>,
    /// The names of the Python frames its stacks hold (by their stand-in addresses).
    pub python_frames: crate::python::PythonFrameTable,
}

/// One executable mapping of a file in the target.
pub struct Module {
    /// The file's path as the target sees it, e.g. /usr/lib/x86_64-linux-gnu/libc.so.6
    /// ("[vdso]" for the vDSO).
    pub path: PathBuf,
    /// The same file as /proc/PID/exe.
    pub is_main_executable: bool,
    /// The executable address range of this mapping in the target.
    pub avma_range: Range<u64>,
    /// The file offset the range starts at (the mapping's offset in /proc/PID/maps).
    pub file_offset: u64,
    /// avma - svma: add to an address in the file to get the address in the target.
    pub bias: u64,
    /// Unique across all images; lets the unwinder tell a replaced module from a kept one.
    pub(crate) id: u64,
    file: Arc<ModuleFile>,
}

impl Module {
    /// The file name, e.g. "libc.so.6".
    pub fn name(&self) -> &str {
        self.path.file_name().and_then(|name| name.to_str()).unwrap_or(VDSO_NAME)
    }

    /// A path to the kept-open file that stays valid while this module lives, even after the
    /// target exits or the file is deleted.
    pub(crate) fn open_file_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.file.as_raw_fd()))
    }

    /// The unwind-related sections of the file, for framehop.
    pub(crate) fn unwind_sections(&self) -> &UnwindSections {
        &self.file.sections
    }

    /// The bytes of one section of the file, shared with the module.
    pub(crate) fn section_bytes(&self, section: &SectionLocation) -> SectionBytes {
        SectionBytes { file: Arc::clone(&self.file), range: section.file_range.clone() }
    }

    /// The whole file's bytes (for its symbol tables).
    pub(crate) fn file_bytes(&self) -> &[u8] {
        &self.file.bytes
    }
}

/// Where one section lies, in the file and as stated in the ELF.
#[derive(Clone, Debug)]
pub(crate) struct SectionLocation {
    pub(crate) svma_range: Range<u64>,
    file_range: Range<usize>,
}

/// The sections framehop uses to unwind through a module.
#[derive(Clone, Debug, Default)]
pub(crate) struct UnwindSections {
    pub(crate) text: Option<SectionLocation>,
    pub(crate) eh_frame: Option<SectionLocation>,
    pub(crate) eh_frame_hdr: Option<SectionLocation>,
    pub(crate) debug_frame: Option<SectionLocation>,
    pub(crate) got: Option<SectionLocation>,
}

/// A section's bytes inside the kept-open file's mapping; derefs to the bytes.
#[derive(Clone)]
pub(crate) struct SectionBytes {
    file: Arc<ModuleFile>,
    range: Range<usize>,
}

impl Deref for SectionBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // The range was checked against the file's length when the sections were read.
        self.file.bytes.get(self.range.clone()).unwrap_or(&[])
    }
}

/// A mapped file, parsed once and shared by all of its executable mappings.
struct ModuleFile {
    /// Kept open so /proc/self/fd/N reaches the file after the target exits.
    file: File,
    bytes: MappedBytes,
    identity: FileIdentity,
    load_segments: Vec<LoadSegment>,
    sections: UnwindSections,
}

/// Device and inode: what makes two opens the same file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileIdentity {
    dev: u64,
    inode: u64,
}

impl FileIdentity {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self { dev: metadata.dev(), inode: metadata.ino() }
    }
}

/// A PT_LOAD program header: which file bytes land at which stated address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LoadSegment {
    pub(crate) file_offset: u64,
    pub(crate) vaddr: u64,
    pub(crate) file_size: u64,
    pub(crate) executable: bool,
}

/// The load bias (avma - svma) of a mapping of `mapping_offset` at `mapping_start`.
///
/// The mapping shows the PT_LOAD segment that contains its file offset, so
/// bias = start - (p_vaddr + (offset - p_offset)). A segment whose p_offset is not page
/// aligned starts mid-page, so the mapping's offset may be up to a page below p_offset; the
/// wrapping arithmetic handles that negative difference. When two segments share the page,
/// an executable mapping prefers the executable segment.
pub(crate) fn load_bias(
    mapping_start: u64,
    mapping_offset: u64,
    mapping_executable: bool,
    segments: &[LoadSegment],
) -> Option<u64> {
    let covers = |segment: &&LoadSegment| {
        let first_page = segment.file_offset - segment.file_offset % PAGE_SIZE;
        let end = segment.file_offset.saturating_add(segment.file_size);
        first_page <= mapping_offset && mapping_offset < end
    };
    let segment = segments
        .iter()
        .filter(covers)
        .find(|segment| segment.executable == mapping_executable)
        .or_else(|| segments.iter().find(covers))?;
    let svma = segment.vaddr.wrapping_add(mapping_offset.wrapping_sub(segment.file_offset));
    Some(mapping_start.wrapping_sub(svma))
}

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MapsEntry {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) executable: bool,
    pub(crate) offset: u64,
    pub(crate) inode: u64,
    /// Empty for anonymous mappings; " (deleted)" removed.
    pub(crate) path: String,
    pub(crate) deleted: bool,
}

impl MapsEntry {
    /// The heap or an anonymous mapping (Go's heap, mmap'd memory).
    pub(crate) fn is_anonymous(&self) -> bool {
        self.path.is_empty() || self.path == "[heap]"
    }
}

/// Parses "start-end perms offset dev inode [path]" (see proc_pid_maps(5)).
pub(crate) fn parse_maps_line(line: &str) -> Option<MapsEntry> {
    let mut rest = line;
    let mut field = || {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        let (field, tail) = rest.split_at(end);
        rest = tail;
        field
    };
    let (start, end) = field().split_once('-')?;
    let perms = field();
    let offset = field();
    let _dev = field();
    let inode = field();
    // The path is the rest of the line and may hold spaces.
    let path = rest.trim_start_matches(' ');
    let (path, deleted) = match path.strip_suffix(DELETED_SUFFIX) {
        Some(path) => (path, true),
        None => (path, false),
    };
    Some(MapsEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        path: path.to_owned(),
        deleted,
    })
}

fn read_maps(pid: u32) -> Result<Vec<MapsEntry>, ImageError> {
    let text = crate::pipeline::target::read_proc_text(format!("/proc/{pid}/maps"))
        .map_err(|source| ImageError::ReadMaps { pid, source })?;
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            parse_maps_line(line)
                .ok_or_else(|| ImageError::MalformedMaps { pid, line: line.to_owned() })
        })
        .collect()
}

impl ProcessImage {
    /// Reads /proc/PID/maps, opens each executable file-backed mapping's file (via
    /// /proc/PID/map_files/START-END, else /proc/PID/root/PATH) and parses its ELF once per
    /// file: load bias and the sections the unwinder needs. The vDSO is copied into a memfd.
    /// Mappings that cannot be opened or parsed are left out (logged at debug level).
    pub fn snapshot(pid: u32) -> Result<ProcessImage, ImageError> {
        // A process whose main thread has exited is read through a thread that lives.
        let pid = crate::pipeline::target::live_thread(pid);
        let exe_identity = std::fs::metadata(format!("/proc/{pid}/exe"))
            .ok()
            .map(|metadata| FileIdentity::of(&metadata));
        let mut image = ProcessImage {
            pid,
            exe_identity,
            modules: Vec::new(),
            mappings: Vec::new(),
            python_frames: Default::default(),
        };
        let entries = read_maps(pid)?;
        image.add_new_modules(&entries);
        image.mappings = entries;
        Ok(image)
    }

    /// Re-reads /proc/PID/maps to pick up libraries loaded since (dlopen); returns how many
    /// new modules. A module whose range a new mapping overlaps (unloaded, then replaced) is
    /// dropped. A gone process is Ok(0) and keeps every module.
    pub fn refresh(&mut self) -> Result<usize, ImageError> {
        let entries = match read_maps(self.pid) {
            Ok(entries) => entries,
            Err(ImageError::ReadMaps { source, .. })
                if source.kind() == io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(libc::ESRCH) =>
            {
                return Ok(0);
            }
            Err(error) => return Err(error),
        };
        let added = self.add_new_modules(&entries);
        self.mappings = entries;
        Ok(added)
    }

    /// The mapping (any permissions) that holds this address, and the one before it
    /// (an anonymous mapping right after a file's data is usually that file's .bss).
    pub(crate) fn mapping_for(&self, addr: u64) -> Option<(&MapsEntry, Option<&MapsEntry>)> {
        let after = self.mappings.partition_point(|entry| entry.start <= addr);
        let index = after.checked_sub(1)?;
        let entry = self.mappings.get(index)?;
        let previous = index.checked_sub(1).and_then(|i| self.mappings.get(i));
        (addr < entry.end).then_some((entry, previous))
    }

    /// A module of the file mapped at `path` (any of its executable mappings).
    pub(crate) fn module_of_file(&self, path: &str) -> Option<&Module> {
        self.modules.iter().find(|module| module.path.as_os_str() == path)
    }

    /// The module whose executable mapping covers this address.
    pub fn module_for(&self, addr: u64) -> Option<&Module> {
        let after = self.modules.partition_point(|module| module.avma_range.start <= addr);
        let module = self.modules.get(after.checked_sub(1)?)?;
        module.avma_range.contains(&addr).then_some(module)
    }

    /// The process the image is of.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// All modules, sorted by start address.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// The process's executable, as mapped.
    pub fn main_module(&self) -> Option<&Module> {
        self.modules.iter().find(|module| module.is_main_executable)
    }

    /// Adds a module for each executable mapping not yet known; returns how many.
    fn add_new_modules(&mut self, entries: &[MapsEntry]) -> usize {
        // Files already open, by the inode the maps show (dev there is not st_dev's encoding).
        let mut open_files: HashMap<(String, u64), Arc<ModuleFile>> = HashMap::new();
        for module in &self.modules {
            open_files.insert(
                (module.path.to_string_lossy().into_owned(), module.file.identity.inode),
                Arc::clone(&module.file),
            );
        }
        let mut added = 0;
        for entry in entries.iter().filter(|entry| entry.executable) {
            let is_vdso = entry.path == VDSO_NAME;
            if !is_vdso && (entry.inode == 0 || !entry.path.starts_with('/')) {
                continue;
            }
            let already_known = self.modules.iter().any(|module| {
                module.avma_range == (entry.start..entry.end)
                    && module.path.as_os_str() == entry.path.as_str()
                    && (is_vdso || module.file.identity.inode == entry.inode)
            });
            if already_known {
                continue;
            }
            let key = (entry.path.clone(), entry.inode);
            let file = match open_files.get(&key) {
                Some(file) => Arc::clone(file),
                None => match self.load_file(entry, is_vdso) {
                    Ok(file) => {
                        let file = Arc::new(file);
                        open_files.insert(key, Arc::clone(&file));
                        file
                    }
                    Err(error) => {
                        log::debug!("pid {}: skipping mapping: {error}", self.pid);
                        continue;
                    }
                },
            };
            let Some(bias) = load_bias(entry.start, entry.offset, true, &file.load_segments) else {
                let error = ModuleLoadError::NoSegmentForOffset {
                    path: entry.path.clone(),
                    offset: entry.offset,
                };
                log::debug!("pid {}: skipping mapping: {error}", self.pid);
                continue;
            };
            let is_main_executable = !is_vdso && self.exe_identity == Some(file.identity);
            // A library unloaded and another mapped in its place: the old one is stale.
            self.modules.retain(|module| {
                module.avma_range.end <= entry.start || entry.end <= module.avma_range.start
            });
            self.modules.push(Module {
                path: PathBuf::from(&entry.path),
                is_main_executable,
                avma_range: entry.start..entry.end,
                file_offset: entry.offset,
                bias,
                id: NEXT_MODULE_ID.fetch_add(1, Ordering::Relaxed),
                file,
            });
            added += 1;
        }
        self.modules.sort_by_key(|module| module.avma_range.start);
        added
    }

    fn load_file(&self, entry: &MapsEntry, is_vdso: bool) -> Result<ModuleFile, ModuleLoadError> {
        let file =
            if is_vdso { copy_vdso(self.pid, entry)? } else { open_mapped_file(self.pid, entry)? };
        ModuleFile::parse(file, &entry.path)
    }
}

/// Opens the file behind a mapping, preferring map_files (the very file mapped, even if
/// deleted or replaced on disk) over the path through the target's root.
fn open_mapped_file(pid: u32, entry: &MapsEntry) -> Result<File, ModuleLoadError> {
    let map_file = format!("/proc/{pid}/map_files/{:x}-{:x}", entry.start, entry.end);
    if let Ok(file) = File::open(&map_file) {
        return Ok(file);
    }
    let by_root = Path::new(&format!("/proc/{pid}/root")).join(entry.path.trim_start_matches('/'));
    let file = File::open(&by_root)
        .map_err(|source| ModuleLoadError::Open { path: entry.path.clone(), source })?;
    let inode = file.metadata().map(|metadata| metadata.ino()).ok();
    if entry.deleted || inode != Some(entry.inode) {
        return Err(ModuleLoadError::Replaced { path: entry.path.clone() });
    }
    Ok(file)
}

/// The vDSO has no file: copy its pages from the target into a memfd, which then serves like
/// any other kept-open file.
fn copy_vdso(pid: u32, entry: &MapsEntry) -> Result<File, ModuleLoadError> {
    let copy_error = |source| ModuleLoadError::CopyVdso { pid, source };
    let len = usize::try_from(entry.end - entry.start)
        .map_err(|_| copy_error(io::Error::from(io::ErrorKind::InvalidData)))?;
    let mut bytes = vec![0; len];
    File::open(format!("/proc/{pid}/mem"))
        .and_then(|mem| mem.read_exact_at(&mut bytes, entry.start))
        .map_err(copy_error)?;
    // SAFETY: the name is a valid NUL-terminated string literal; the call has no other inputs.
    let fd = unsafe { libc::memfd_create(c"tracer-vdso".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(copy_error(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(&bytes).map_err(copy_error)?;
    Ok(file)
}

impl ModuleFile {
    fn parse(file: File, path: &str) -> Result<Self, ModuleLoadError> {
        let map_error = |source| ModuleLoadError::Map { path: path.to_owned(), source };
        let metadata = file.metadata().map_err(map_error)?;
        let bytes = MappedBytes::map(&file, metadata.len()).map_err(map_error)?;
        let elf = ElfFile64::<object::Endianness>::parse(&*bytes)
            .map_err(|source| ModuleLoadError::NotElf { path: path.to_owned(), source })?;
        let endian = elf.endian();
        let load_segments = elf
            .elf_program_headers()
            .iter()
            .filter(|header| header.p_type(endian) == object::elf::PT_LOAD)
            .map(|header| LoadSegment {
                file_offset: header.p_offset(endian),
                vaddr: header.p_vaddr(endian),
                file_size: header.p_filesz(endian),
                executable: header.p_flags(endian) & object::elf::PF_X != 0,
            })
            .collect();
        let section = |name: &str| {
            let section = elf.section_by_name(name)?;
            let (offset, size) = section.file_range()?;
            let end = usize::try_from(offset.checked_add(size)?).ok()?;
            let file_range = usize::try_from(offset).ok()?..end;
            if file_range.end > bytes.len() {
                return None;
            }
            Some(SectionLocation {
                svma_range: section.address()..section.address().checked_add(section.size())?,
                file_range,
            })
        };
        let sections = UnwindSections {
            text: section(".text"),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame: section(".debug_frame"),
            got: section(".got"),
        };
        drop(elf);
        Ok(Self { identity: FileIdentity::of(&metadata), file, bytes, load_segments, sections })
    }
}

/// A read-only private mapping of a whole file.
struct MappedBytes {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value; sharing &[u8] across threads is fine.
unsafe impl Send for MappedBytes {}
// SAFETY: as above, nothing mutates the mapping.
unsafe impl Sync for MappedBytes {}

impl MappedBytes {
    fn map(file: &File, len: u64) -> io::Result<Self> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        // SAFETY: a fresh private read-only mapping of an open file; the kernel picks the
        // address, and we check the result before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr: ptr.cast(), len })
    }
}

impl Deref for MappedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` readable bytes mapped until drop. Files we map are
        // libraries and executables, replaced by rename on upgrade rather than rewritten.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for MappedBytes {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`; no borrow of it outlives self.
        unsafe {
            libc::munmap(self.ptr.cast_mut().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(file_offset: u64, vaddr: u64, file_size: u64, executable: bool) -> LoadSegment {
        LoadSegment { file_offset, vaddr, file_size, executable }
    }

    #[test]
    fn bias_of_a_pie_text_mapping() {
        // Like Debian's libc: r-- at 0, r-x at 0x28000 (vaddr 0x28000), r-- after.
        let segments = [
            segment(0, 0, 0x28000, false),
            segment(0x28000, 0x28000, 0x155000, true),
            segment(0x17d000, 0x17d000, 0x4f000, false),
        ];
        let start = 0x7f00_1234_5000 + 0x28000;
        assert_eq!(load_bias(start, 0x28000, true, &segments), Some(0x7f00_1234_5000));
    }

    #[test]
    fn bias_when_vaddr_and_offset_differ() {
        // lld-style layout: the text segment's vaddr is a page above its file offset.
        let segments = [segment(0, 0, 0x1234, false), segment(0x1234, 0x2234, 0x5000, true)];
        // The kernel maps from the page holding p_offset: offset 0x1000 at start, which is
        // vaddr 0x2000.
        let start = 0x5555_0000_2000;
        assert_eq!(load_bias(start, 0x1000, true, &segments), Some(0x5555_0000_0000));
        // The read-only mapping of the same page resolves through the first segment.
        assert_eq!(load_bias(0x5555_0000_0000, 0, false, &segments), Some(0x5555_0000_0000));
    }

    #[test]
    fn bias_of_a_non_pie_executable_is_zero() {
        let segments = [segment(0x1000, 0x401000, 0x2000, true)];
        assert_eq!(load_bias(0x401000, 0x1000, true, &segments), Some(0));
    }

    #[test]
    fn no_bias_without_a_covering_segment() {
        let segments = [segment(0, 0, 0x1000, true)];
        assert_eq!(load_bias(0x1000, 0x8000, true, &segments), None);
    }

    #[test]
    fn parses_maps_lines() {
        let line = "7f3a1c028000-7f3a1c1a5000 r-xp 00028000 fd:01 1234567                    /usr/lib/x86_64-linux-gnu/libc.so.6";
        assert_eq!(
            parse_maps_line(line),
            Some(MapsEntry {
                start: 0x7f3a1c028000,
                end: 0x7f3a1c1a5000,
                executable: true,
                offset: 0x28000,
                inode: 1234567,
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
                deleted: false,
            })
        );
        let deleted = parse_maps_line("1000-2000 r-xp 00000000 fd:01 42 /tmp/my lib.so (deleted)")
            .expect("parses");
        assert_eq!(deleted.path, "/tmp/my lib.so");
        assert!(deleted.deleted);
        let anonymous = parse_maps_line("1000-2000 rw-p 00000000 00:00 0").expect("parses");
        assert_eq!(anonymous.path, "");
        assert!(!anonymous.executable);
        assert_eq!(parse_maps_line("garbage"), None);
    }
}

/// Re-reads a process image's memory map, at most once per `MAP_REFRESH_INTERVAL`.
#[derive(Debug, Default)]
pub struct MapRefresh {
    last: Option<Instant>,
}

impl MapRefresh {
    /// Picks up the libraries `pid` mapped since `image` was read, unless it was re-read
    /// less than `MAP_REFRESH_INTERVAL` ago; returns how many modules were added.
    pub fn refresh(&mut self, pid: u32, image: &mut ProcessImage) -> usize {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < MAP_REFRESH_INTERVAL) {
            return 0;
        }
        self.last = Some(now);
        match image.refresh() {
            Ok(added) => {
                if added > 0 {
                    log::info!("{added} new modules mapped in pid {pid}");
                }
                added
            }
            Err(err) => {
                log::warn!("cannot refresh the memory map of pid {pid}: {err}");
                0
            }
        }
    }
}
