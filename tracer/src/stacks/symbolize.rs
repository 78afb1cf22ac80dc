//! Naming unwound addresses with blazesym: symbols, inlined callees, file and line.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{CodeInfo, Input, Sym, Symbolized, Symbolizer};

use super::process_image::{Module, ProcessImage};
use crate::python;

/// The name of a frame (or module) nothing names.
pub const UNKNOWN: &str = "[unknown]";

/// The module of a Python frame (its file is the frame's `file`).
pub const PYTHON_MODULE: &str = "[python]";

/// One symbolized frame. One address can give several: the inlined callees first, innermost
/// first, and the containing function last.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Demangled, Rust hash removed, e.g. "std::sync::mpmc::array::Channel<T>::send" or
    /// "pthread_cond_wait"; "[unknown]" when none.
    pub name: String,
    /// File name of the module, "[unknown]" if none.
    pub module: String,
    /// The module is the target's main executable (where its own code usually lives).
    pub module_is_main: bool,
    /// Source file, as the debug info states it (often absolute).
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Inlined into the next frame of the same address.
    pub inlined: bool,
    /// The address as unwound (a return address is not adjusted).
    pub address: u64,
}

impl Frame {
    /// The function alone: a Python frame's name without its `(file:line)`.
    pub fn function_name(&self) -> &str {
        match self.name.rsplit_once(" (") {
            Some((function, _)) if self.module == PYTHON_MODULE => function,
            _ => &self.name,
        }
    }

    /// A Python frame, named as py-spy names it (`report_stat (pypileup.py:22)`).
    pub fn python(name: python::PythonFrameName, address: u64) -> Self {
        Frame {
            name: name.display(),
            module: PYTHON_MODULE.to_owned(),
            module_is_main: false,
            file: Some(name.file),
            line: name.line,
            inlined: false,
            address,
        }
    }

    /// A frame only known by its address, under `name` (`[unknown]`, `[stack lost]`).
    pub fn unknown_named(name: &str, address: u64) -> Self {
        Frame {
            name: name.to_owned(),
            module: UNKNOWN.to_owned(),
            module_is_main: false,
            file: None,
            line: None,
            inlined: false,
            address,
        }
    }
}

/// Symbolizes stacks, caching the frames of each address.
pub struct StackSymbolizer {
    /// blazesym's symbolizer, which keeps each file it parsed: this one's own, or shared
    /// (`SharedSymbolFiles`).
    symbolizer: Rc<Symbolizer>,
    cache: HashMap<AddressKey, Vec<Frame>>,
    /// Modules whose debug info blazesym cannot read (e.g. compressed sections of a separate
    /// debug file), symbolized from their ELF symbols instead.
    without_debug_info: HashSet<u64>,
}

/// An address within one module (ids are unique across images), and whether it is a return
/// address (looked up one byte earlier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct AddressKey {
    module_id: Option<u64>,
    address: u64,
    is_return_address: bool,
}

impl Default for StackSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    /// The symbolizer the `StackSymbolizer`s made on this thread share while a
    /// `SharedSymbolFiles` lives (None: each makes its own).
    static SHARED_FILES: RefCell<Option<Rc<Symbolizer>>> = const { RefCell::new(None) };
}

/// While it lives, the `StackSymbolizer`s made on this thread share one blazesym
/// symbolizer, so the files they parse are parsed once (blazesym keys them by device and
/// inode): the report of three hundred processes that map one libc, whose debug file's
/// compressed DWARF takes 70 ms to inflate here, parses it once instead of once per
/// process, per chain and per peer (`pipeline::ReportScope`). A symbolizer made
/// meanwhile keeps the shared files as long as it lives itself; those made after make
/// their own again.
pub struct SharedSymbolFiles {
    before: Option<Rc<Symbolizer>>,
}

impl SharedSymbolFiles {
    /// Shares files from now on, or goes on sharing those shared already (a report of
    /// several processes, each of whose reports shares its own files).
    pub fn on_this_thread() -> Self {
        SHARED_FILES.with(|files| {
            let before = files.borrow().clone();
            let shared = before.clone().unwrap_or_else(|| Rc::new(new_symbolizer()));
            *files.borrow_mut() = Some(shared);
            Self { before }
        })
    }
}

impl Drop for SharedSymbolFiles {
    fn drop(&mut self) {
        let before = self.before.take();
        SHARED_FILES.with(|files| *files.borrow_mut() = before);
    }
}

/// Files shared as `SharedSymbolFiles` shares them, for a daemon or a live view that
/// symbolizes for as long as it runs: a new set every `RENEWED_EVERY` lets go of the
/// files of processes gone since and of files replaced on disk, which a set keeps as long
/// as it lives.
pub struct RenewedSymbolFiles {
    files: Option<SharedSymbolFiles>,
    since: std::time::Instant,
}

impl RenewedSymbolFiles {
    pub const RENEWED_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

    pub fn on_this_thread() -> Self {
        Self { files: Some(SharedSymbolFiles::on_this_thread()), since: std::time::Instant::now() }
    }

    /// Makes a new set once `RENEWED_EVERY` has passed; true when it did, and the
    /// symbolizers made with the old set are to be made again.
    pub fn renew_when_due(&mut self) -> bool {
        if self.since.elapsed() < Self::RENEWED_EVERY {
            return false;
        }
        // The old set goes first: dropping it puts back the one before it on this thread.
        self.files = None;
        self.files = Some(SharedSymbolFiles::on_this_thread());
        self.since = std::time::Instant::now();
        true
    }
}

fn new_symbolizer() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        // blazesym would demangle every name it cannot place as C++ types: a C function
        // `i` or `Pc` would read `int`, `char*`. `demangle` is stricter.
        .enable_demangling(false)
        .build()
}

impl StackSymbolizer {
    /// A symbolizer of its own, or sharing its files with the others while a
    /// `SharedSymbolFiles` lives on this thread.
    pub fn new() -> Self {
        let shared = SHARED_FILES.with(|files| files.borrow().clone());
        Self {
            symbolizer: shared.unwrap_or_else(|| Rc::new(new_symbolizer())),
            cache: HashMap::new(),
            without_debug_info: HashSet::new(),
        }
    }

    /// `frames` as from `UnwoundStack` (leaf first). Return addresses (index >= 1) are looked
    /// up at address - 1 so the call site, not the next line, is named. Returns the frames
    /// leaf first, inlined ones expanded (innermost first within each address).
    pub fn symbolize(&mut self, image: &ProcessImage, frames: &[u64]) -> Vec<Frame> {
        let mut symbolized = Vec::with_capacity(frames.len());
        for (index, &address) in frames.iter().enumerate() {
            if python::is_python_frame_address(address) {
                symbolized.push(python_frame(image, address));
                continue;
            }
            let is_return_address = index > 0;
            let lookup = lookup_address(address, is_return_address);
            let module = image.module_for(lookup);
            let key = AddressKey {
                module_id: module.map(|module| module.id),
                address,
                is_return_address,
            };
            if let Some(cached) = self.cache.get(&key) {
                symbolized.extend_from_slice(cached);
                continue;
            }
            let resolved = match module {
                Some(module) => self.symbolize_in_module(module, address, lookup),
                None => Vec::new(),
            };
            let resolved =
                if resolved.is_empty() { vec![unknown_frame(module, address)] } else { resolved };
            symbolized.extend_from_slice(&resolved);
            self.cache.insert(key, resolved);
        }
        symbolized
    }

    /// The frames at one address of a module, innermost first; empty if it has no symbol.
    fn symbolize_in_module(&mut self, module: &Module, address: u64, lookup: u64) -> Vec<Frame> {
        let svma = lookup.wrapping_sub(module.bias);
        let input = Input::VirtOffset(svma);
        let with_debug_info = !self.without_debug_info.contains(&module.id);
        let mut result =
            self.symbolizer.symbolize_single(&elf_source(module, with_debug_info), input);
        if with_debug_info && let Err(error) = &result {
            // One unreadable debug file must not cost the module its ELF symbols.
            log::debug!("{}: debug info unusable, using ELF symbols: {error:#}", module.name());
            self.without_debug_info.insert(module.id);
            result = self.symbolizer.symbolize_single(&elf_source(module, false), input);
        }
        let sym = match result {
            Ok(Symbolized::Sym(sym)) => sym,
            Ok(Symbolized::Unknown(reason)) => {
                log::trace!("{} {svma:#x}: no symbol ({reason})", module.name());
                return Vec::new();
            }
            Err(error) => {
                log::debug!("{} {svma:#x}: cannot symbolize: {error:#}", module.name());
                return Vec::new();
            }
        };
        let frame = |name: &str, code_info: Option<&CodeInfo<'_>>, inlined: bool| Frame {
            name: strip_rust_hash(&demangle(name)).to_owned(),
            module: module.name().to_owned(),
            module_is_main: module.is_main_executable,
            file: code_info.map(|info| info.to_path().display().to_string()),
            line: code_info.and_then(|info| info.line),
            inlined,
            address,
        };
        // blazesym lists inlined callees outermost first; we want innermost first.
        let mut frames: Vec<Frame> = sym
            .inlined
            .iter()
            .rev()
            .map(|inlined| frame(&inlined.name, inlined.code_info.as_ref(), true))
            .collect();
        let qualified =
            if with_debug_info { self.qualified_name(module, input, &sym) } else { None };
        let name = qualified.as_deref().unwrap_or(&sym.name);
        frames.push(frame(name, sym.code_info.as_deref(), false));
        frames
    }

    /// The symbol table's name of function `sym`, where its debug info names it without
    /// its path: Rust's and C++'s DWARF say `update_cache_slowly`, `park`, `{async_fn#0}`,
    /// which neither say whose they are nor let the call-site rule tell std's from the
    /// program's; the symbol table says `tokio_app::update_cache_slowly`. Only the same
    /// function's (same start) and only a name with a path: a C function keeps its debug
    /// name (glibc's `__GI___poll`, where its dynamic symbol is `poll`).
    fn qualified_name(&self, module: &Module, input: Input<u64>, sym: &Sym<'_>) -> Option<String> {
        if has_path(&sym.name) {
            return None;
        }
        let Ok(Symbolized::Sym(elf)) =
            self.symbolizer.symbolize_single(&elf_source(module, false), input)
        else {
            return None;
        };
        let name = strip_rust_hash(&demangle(&elf.name)).to_owned();
        (elf.addr == sym.addr && has_path(&name)).then_some(name)
    }
}

/// Whether function name `name` has a path (`a::b`) outside its generic arguments and
/// parameters (`lock<u64>` has none, `<std::fs::File>::read` has).
fn has_path(name: &str) -> bool {
    let mut depth = 0usize;
    let mut previous = 0u8;
    let bytes = name.as_bytes();
    for (index, &byte) in bytes.iter().enumerate() {
        match byte {
            b'<' | b'(' => depth += 1,
            // Not the arrow of a function type (`fn() -> u8`).
            b'>' if previous != b'-' => depth = depth.saturating_sub(1),
            b')' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes.get(index + 1) == Some(&b':') => return true,
            _ => {}
        }
        previous = byte;
    }
    false
}

/// The Python frame that `address` stands for in `image`'s stacks.
fn python_frame(image: &ProcessImage, address: u64) -> Frame {
    match image.python_frames.get(address) {
        Some(name) => Frame::python(name, address),
        None => Frame::unknown_named(UNKNOWN, address),
    }
}

/// The module's kept-open file as a blazesym source, which stays valid after the target exits.
fn elf_source(module: &Module, debug_syms: bool) -> Source<'static> {
    let mut elf = Elf::new(module.open_file_path());
    elf.debug_syms = debug_syms;
    Source::Elf(elf)
}

/// A return address points after the call; one byte back is inside the call instruction, so
/// the lookup names the call site (and the right function when the call is its last
/// instruction).
pub(crate) fn lookup_address(address: u64, is_return_address: bool) -> u64 {
    if is_return_address { address.saturating_sub(1) } else { address }
}

fn unknown_frame(module: Option<&Module>, address: u64) -> Frame {
    Frame {
        name: UNKNOWN.to_owned(),
        module: module.map_or(UNKNOWN, Module::name).to_owned(),
        module_is_main: module.is_some_and(|module| module.is_main_executable),
        file: None,
        line: None,
        inlined: false,
        address,
    }
}

/// A mangled name demangled, anything else as it is: only `_R…` (Rust v0) and `_Z…`
/// (Rust legacy `_ZN…E`, C++) are mangled; a C function may well be named `i`, `Pc` or
/// `St`, which a demangler reads as a C++ type. Rust's hash is left out.
pub(crate) fn demangle(name: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    if (name.starts_with("_R") || name.starts_with("_ZN"))
        && let Ok(demangled) = rustc_demangle::try_demangle(name)
    {
        return Cow::Owned(format!("{demangled:#}"));
    }
    if name.starts_with("_Z")
        && let Some(demangled) =
            cpp_demangle::Symbol::new(name).ok().and_then(|symbol| symbol.demangle().ok())
    {
        return Cow::Owned(demangled);
    }
    Cow::Borrowed(name)
}

/// Removes a legacy Rust mangling hash ("::h0123456789abcdef") that demangling left in place
/// (blazesym strips it when it demangles, but names from DWARF or ELF may keep it).
pub(crate) fn strip_rust_hash(name: &str) -> &str {
    const HASH_DIGITS: usize = 16;
    let Some((prefix, hash)) = name.rsplit_once("::h") else {
        return name;
    };
    let is_hash = hash.len() == HASH_DIGITS && hash.bytes().all(|byte| byte.is_ascii_hexdigit());
    if is_hash { prefix } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_outside_generic_arguments_is_a_path() {
        assert!(has_path("tokio_app::update_cache_slowly"));
        assert!(has_path("<std::sys::sync::mutex::futex::Mutex>::lock_contended"));
        assert!(has_path("std::condition_variable::wait(std::unique_lock<std::mutex>&)"));
        assert!(!has_path("update_cache_slowly"));
        assert!(!has_path("lock<u64>"));
        assert!(!has_path("block_on<tokio_app::main::{async_block_env#0}>"));
        assert!(!has_path("call_once<fn() -> core::result::Result<(), ()>>"));
        assert!(!has_path("{async_fn#0}"));
        assert!(!has_path("__GI___poll"));
    }

    #[test]
    fn only_mangled_names_are_demangled() {
        // Plain C names that read as C++ types to a demangler that tries everything.
        for name in ["i", "Pc", "St", "Dn", "f", "main", "enqueue_stat"] {
            assert_eq!(demangle(name), name);
        }
        assert_eq!(demangle("_ZN3app11STATS_QUEUE17h0123456789abcdefE"), "app::STATS_QUEUE");
        assert_eq!(demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
        assert_eq!(demangle("_Z3fooic"), "foo(int, char)");
        assert_eq!(demangle("_ZN5space3fooEibc"), "space::foo(int, bool, char)");
        // Not a valid mangling: left as it is.
        assert_eq!(demangle("_Zzz"), "_Zzz");
    }

    #[test]
    fn return_addresses_are_looked_up_one_byte_back() {
        assert_eq!(lookup_address(0x1000, false), 0x1000);
        assert_eq!(lookup_address(0x1000, true), 0xfff);
        assert_eq!(lookup_address(0, true), 0);
    }

    #[test]
    fn strips_only_a_real_rust_hash() {
        assert_eq!(strip_rust_hash("std::thread::park::h1a2b3c4d5e6f7a8b"), "std::thread::park");
        assert_eq!(strip_rust_hash("pthread_cond_wait"), "pthread_cond_wait");
        assert_eq!(strip_rust_hash("foo::handle"), "foo::handle");
        assert_eq!(strip_rust_hash("foo::h12"), "foo::h12");
    }
}
