//! glibc's stdio locks. A thread in `printf` waits on its FILE's lock (`_IO_lock_t`: a
//! futex word, a recursion count and its owner's thread pointer) while another thread holds
//! it, often one blocked writing to a stdout whose reader stalled. The FILEs of a process
//! are the list libc keeps of them (`_IO_list_all`), each naming its lock: a futex at one
//! of those is named by its FILE (`stdout`, `FILE fd 7 (/var/log/app.log)`), and its
//! holder is the thread whose descriptor (`struct pthread`) the owner points to, its tid
//! at the offset glibc publishes for debuggers (`_thread_db_pthread_tid`).

use std::collections::{HashMap, HashSet};

use object::{Object as _, ObjectSymbol as _};

use crate::{
    memory::{Memory, word},
    stacks::ProcessImage,
};

/// `struct _IO_FILE` on x86_64 (bits/types/struct_FILE.h, a public layout): the next FILE
/// of the list, the descriptor, the lock.
const FILE_CHAIN: usize = 0x68;
const FILE_FILENO: usize = 0x70;
const FILE_LOCK: usize = 0x88;
const FILE_READ: usize = FILE_LOCK + 8;
/// `_IO_lock_t` (sysdeps/nptl/stdio-lock.h): `int lock; int cnt; void *owner;`.
const LOCK_OWNER: u64 = 8;
/// `tcbhead_t.self` at the start of `struct pthread` (x86_64): the thread pointer points
/// to itself, which tells a live thread's descriptor from a stale word.
const TCB_SELF: u64 = 0x10;
/// FILEs followed at most: the list is the process's open FILEs.
const MAX_FILES: usize = 4096;

/// The FILE locks of one process, read from its memory.
pub struct StdioLocks {
    memory: Memory,
    /// Where libc's FILEs and the tid field are, found once (libc does not move).
    symbols: StdioSymbols,
    /// The FILE each lock belongs to, by the lock's (and its futex word's) address.
    files: HashMap<u64, String>,
    /// Where `struct pthread` keeps the thread's tid, when libc says.
    tid_offset: Option<u64>,
}

/// The symbols of glibc's that the FILE locks are found with, as addresses in the target.
#[derive(Default)]
struct StdioSymbols {
    list_all: Option<u64>,
    streams: Vec<(u64, &'static str)>,
    /// `_thread_db_pthread_tid`: three u32s, the field's bits, count and offset.
    tid_field: Option<u64>,
}

impl StdioLocks {
    /// The FILE locks of `image`'s process; None when it has no glibc.
    pub fn read(image: &ProcessImage) -> Option<Self> {
        let symbols = stdio_symbols(image);
        symbols.list_all?;
        let memory = Memory { pid: image.pid() };
        let mut locks = Self { memory, symbols, files: HashMap::new(), tid_offset: None };
        locks.refresh();
        Some(locks)
    }

    /// Reads the list of FILEs again (FILEs are opened and closed), with the symbols found
    /// at the first read.
    pub fn refresh(&mut self) {
        let (memory, symbols) = (&self.memory, &self.symbols);
        self.files.clear();
        let mut head = [0u8; 8];
        let Some(list_all) = symbols.list_all else { return };
        if memory.read_exact(list_all, &mut head).is_err() {
            return;
        }
        let mut seen = HashSet::new();
        let mut file = u64::from_le_bytes(head);
        while file != 0 && seen.insert(file) && seen.len() <= MAX_FILES {
            let mut fields = [0u8; FILE_READ];
            if memory.read_exact(file, &mut fields).is_err() {
                break;
            }
            let lock = word(&fields, FILE_LOCK);
            let fd = word(&fields, FILE_FILENO) as u32 as i32;
            let name = match symbols.streams.iter().find(|(address, _)| *address == file) {
                Some((_, stream)) => (*stream).to_owned(),
                None => file_name(memory.pid, fd),
            };
            if lock != 0 {
                self.files.insert(lock, name);
            }
            file = word(&fields, FILE_CHAIN);
        }
        self.tid_offset = symbols.tid_field.and_then(|field| {
            let mut descriptor = [0u8; 12];
            memory.read_exact(field, &mut descriptor).ok()?;
            let [bits, _count, offset] =
                [0, 4, 8].map(|at| u32::from_le_bytes(descriptor[at..at + 4].try_into().unwrap()));
            (bits == 32).then_some(u64::from(offset))
        });
    }

    /// The FILE whose lock is at `address`: `stdout`, `FILE fd 7 (/var/log/app.log)`.
    pub fn file_of(&self, address: u64) -> Option<&str> {
        self.files.get(&address).map(String::as_str)
    }

    /// The thread holding the FILE lock at `address`, if one does: the tid in the
    /// `struct pthread` its owner points to.
    pub fn holder(&self, address: u64) -> Option<u32> {
        let offset = self.tid_offset?;
        self.files.get(&address)?;
        // The process's words: a wild one wraps, and its read fails.
        let owner = self.read_word(address.wrapping_add(LOCK_OWNER))?;
        if owner == 0 || self.read_word(owner.wrapping_add(TCB_SELF))? != owner {
            return None;
        }
        let tid = self.read_word(owner.wrapping_add(offset))? as u32;
        let pid = self.memory.pid;
        let is_thread =
            tid != 0 && std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists();
        is_thread.then_some(tid)
    }

    fn read_word(&self, address: u64) -> Option<u64> {
        let mut bytes = [0u8; 8];
        self.memory.read_exact(address, &mut bytes).ok()?;
        Some(u64::from_le_bytes(bytes))
    }
}

/// A FILE other than the standard streams, by its descriptor and what that is open on:
/// `FILE fd 7 (/var/log/app.log)`.
fn file_name(pid: u32, fd: i32) -> String {
    match std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
        Ok(target) => format!("FILE fd {fd} ({})", target.display()),
        Err(_) => format!("FILE fd {fd}"),
    }
}

/// glibc's list of FILEs, its three standard streams and the tid field's descriptor, from
/// the dynamic symbols of the modules that define them (libc.so.6; before glibc 2.34 the
/// descriptor is libpthread's).
fn stdio_symbols(image: &ProcessImage) -> StdioSymbols {
    let mut found = StdioSymbols::default();
    for module in image.modules() {
        let name = module.name();
        if !name.starts_with("libc.so") && !name.starts_with("libpthread.so") {
            continue;
        }
        let Ok(file) = object::File::parse(module.file_bytes()) else { continue };
        for symbol in file.dynamic_symbols() {
            let Ok(name) = symbol.name() else { continue };
            if symbol.address() == 0 {
                continue;
            }
            let address = symbol.address().wrapping_add(module.bias);
            match name {
                "_IO_list_all" => found.list_all = Some(address),
                "_IO_2_1_stdin_" => found.streams.push((address, "stdin")),
                "_IO_2_1_stdout_" => found.streams.push((address, "stdout")),
                "_IO_2_1_stderr_" => found.streams.push((address, "stderr")),
                "_thread_db_pthread_tid" => found.tid_field = Some(address),
                _ => {}
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    unsafe extern "C" {
        static mut stderr: *mut libc::FILE;
        fn flockfile(fp: *mut libc::FILE);
        fn funlockfile(fp: *mut libc::FILE);
    }

    /// `fp`'s lock address, as glibc keeps it (`_lock` of `struct _IO_FILE`).
    fn lock_of(fp: *mut libc::FILE) -> u64 {
        // SAFETY: `fp` is a live FILE; the field is a pointer at a fixed offset.
        unsafe { *(fp.cast::<u8>().add(FILE_LOCK).cast::<u64>()) }
    }

    #[test]
    fn a_file_s_lock_is_named_by_its_file_and_held_by_its_thread() {
        let (_reader, writer) = std::io::pipe().expect("a pipe");
        let fd = writer.as_raw_fd();
        // SAFETY: a duplicate of a descriptor we own, which the FILE owns from here on (it
        // is never closed: one descriptor left open in a test).
        let fp = unsafe { libc::fdopen(libc::dup(fd), c"w".as_ptr()) };
        assert!(!fp.is_null());
        let image = ProcessImage::snapshot(std::process::id()).expect("this process's image");
        let locks = StdioLocks::read(&image).expect("glibc's FILEs");
        let lock = lock_of(fp);
        let name = locks.file_of(lock).expect("the FILE's lock");
        // SAFETY: a live FILE.
        let file_fd = unsafe { libc::fileno(fp) };
        let link = std::fs::read_link(format!("/proc/self/fd/{file_fd}")).expect("its fd");
        assert_eq!(name, format!("FILE fd {file_fd} ({})", link.display()));
        assert!(name.contains(" (pipe:["), "{name}");
        assert_eq!(locks.holder(lock), None, "unlocked");
        // SAFETY: locks the FILE for this thread; unlocked below.
        unsafe { flockfile(fp) };
        let holder = locks.holder(lock);
        // SAFETY: as above.
        unsafe { funlockfile(fp) };
        // SAFETY: gettid takes nothing.
        assert_eq!(holder, Some(unsafe { libc::gettid() } as u32));
        assert_eq!(locks.holder(lock), None, "unlocked again");
        // The standard streams by name.
        // SAFETY: glibc's stderr, read once.
        let stderr_lock = lock_of(unsafe { stderr });
        assert_eq!(locks.file_of(stderr_lock), Some("stderr"));
        assert_eq!(locks.file_of(0x1000), None);
    }

    #[test]
    fn a_file_opened_after_the_first_read_is_found_by_a_refresh() {
        let image = ProcessImage::snapshot(std::process::id()).expect("this process's image");
        let mut locks = StdioLocks::read(&image).expect("glibc's FILEs");
        let (_reader, writer) = std::io::pipe().expect("a pipe");
        // SAFETY: as in the test above: a duplicate the FILE owns, left open.
        let fp = unsafe { libc::fdopen(libc::dup(writer.as_raw_fd()), c"w".as_ptr()) };
        assert!(!fp.is_null());
        assert_eq!(locks.file_of(lock_of(fp)), None, "opened after the read");
        locks.refresh();
        let name = locks.file_of(lock_of(fp)).expect("found by the refresh");
        assert!(name.starts_with("FILE fd ") && name.contains("(pipe:["), "{name}");
    }
}
