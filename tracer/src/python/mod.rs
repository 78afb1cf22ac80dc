//! CPython from outside: each thread's Python frames, read from the interpreter's memory
//! without stopping it (as py-spy does), and put in its native stack where the interpreter
//! evaluates them; the Python objects its waits wait on; asyncio's pending tasks.
//!
//! The way in is the `_PyRuntime` symbol of the interpreter's executable or libpython:
//! `_PyRuntime.interpreters.head → threads.head → next …`, each thread state with its
//! native thread id and its innermost frame; frames link to their callers and hold their
//! code object (function, file, line table) and the instruction being run.

mod asyncio;
mod code;
mod layout;
mod objects;
mod thread_names;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object::{Object as _, ObjectSymbol as _};

pub use asyncio::{Awaited, PendingTask, task_stacks};
use code::{CodeCache, CodeInfo};
use layout::{FRAME_OWNED_BY_CSTACK, FRAME_OWNED_BY_GENERATOR, GIL_SIZE, Gil, Layout};

use crate::memory::{Memory, word};
use crate::model::PythonInfo;
use crate::stacks::ProcessImage;

/// Frames read per thread at most; deeper ones are left out (the root end).
const MAX_FRAMES: usize = 512;
/// Thread states walked at most (a torn list must not loop).
const MAX_THREADS: usize = 1 << 20;
/// A thread not found among the thread states re-reads them, at most this often.
const THREAD_STATES_REFRESH: Duration = Duration::from_millis(100);

/// One CPython interpreter in a process, found and ready to read.
pub struct PythonProcess {
    memory: Memory,
    layout: Layout,
    /// The address of `_PyRuntime`.
    runtime: u64,
    /// `_PyEval_EvalFrameDefault` (and its cold part): a native frame there is one
    /// evaluation of Python frames.
    evaluation: Vec<Range<u64>>,
    codes: CodeCache,
    /// Thread state by native thread id.
    thread_states: HashMap<u32, u64>,
    states_read_at: Option<Instant>,
    /// The main interpreter's GIL: a futex wait in it is a thread waiting to run Python.
    gil: Option<Range<u64>>,
    /// Type objects known to be (or not to be) `_thread.lock`/`RLock`.
    lock_types: HashMap<u64, bool>,
    /// Python threads' names by native thread id, as last read.
    thread_names: thread_names::ThreadNames,
    pub counts: PythonCounts,
}

/// What could not be read, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonCounts {
    /// Frames whose code object could not be read (left out of their stack).
    pub unreadable_frames: u64,
    /// Stacks cut at `MAX_FRAMES`.
    pub truncated_stacks: u64,
}

/// One Python frame of a thread, leaf first in a list.
#[derive(Clone, Debug)]
pub struct PythonFrame {
    /// The `_PyInterpreterFrame` (its locals follow it).
    pub address: u64,
    pub code: Arc<CodeInfo>,
    pub line: Option<u32>,
    /// `f_globals`: the module's dict.
    pub globals: u64,
    /// The outermost frame of one C-level evaluation: the frames up to here stand for
    /// one `_PyEval_EvalFrameDefault` of the native stack.
    pub ends_evaluation: bool,
}

impl PythonFrame {
    /// How the frame is shown: `report_stat (pypileup.py:15)`, as py-spy shows it.
    pub fn name(&self) -> PythonFrameName {
        PythonFrameName {
            function: self.code.qualname.clone(),
            file: self.code.filename.clone(),
            line: self.line,
        }
    }
}

/// Why a process that runs CPython cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error("CPython {0}.{1} is not supported (3.11, 3.12 and 3.13 are); its stacks stay native")]
    UnsupportedVersion(u64, u64),
    #[error("a free-threaded CPython build is not supported; its stacks stay native")]
    FreeThreaded,
    #[error("cannot read CPython's _PyRuntime: {0}")]
    Unreadable(std::io::Error),
}

impl PythonError {
    /// The interpreter's version as far as it was told.
    pub fn version(&self) -> String {
        match self {
            PythonError::UnsupportedVersion(major, minor) => format!("{major}.{minor}"),
            PythonError::FreeThreaded => "3.13t".to_owned(),
            PythonError::Unreadable(_) => "unknown".to_owned(),
        }
    }
}

/// The interpreter's symbols, in the target's addresses.
struct InterpreterSymbols {
    runtime: u64,
    version: u64,
    evaluation: Vec<Range<u64>>,
}

impl PythonProcess {
    /// The CPython interpreter of process `pid`, if it runs one: `Ok(None)` for a
    /// process without one.
    pub fn detect(pid: u32, image: &ProcessImage) -> Result<Option<Self>, PythonError> {
        let Some(symbols) = image.modules().iter().find_map(interpreter_symbols) else {
            return Ok(None);
        };
        let memory = Memory { pid };
        let mut version = [0u8; 8];
        memory.read_exact(symbols.version, &mut version).map_err(PythonError::Unreadable)?;
        let version = u64::from_le_bytes(version);
        let mut runtime = vec![0u8; layout::DEBUG_OFFSETS_SIZE];
        memory.read_exact(symbols.runtime, &mut runtime).map_err(PythonError::Unreadable)?;
        let layout = Layout::for_version(version, &runtime).ok_or_else(|| {
            let (major, minor) = (version >> 24 & 0xff, version >> 16 & 0xff);
            if (major, minor) == (3, 13) {
                PythonError::FreeThreaded
            } else {
                PythonError::UnsupportedVersion(major, minor)
            }
        })?;
        let gil = match layout.gil {
            Gil::InRuntime(offset) => Some(symbols.runtime + offset),
            Gil::InMainInterpreter(offset) => {
                // `_PyRuntime.interpreters.main` follows `.head`.
                let mut main = [0u8; 8];
                let at = symbols.runtime + layout.runtime_interpreters_head + 8;
                memory
                    .read_exact(at, &mut main)
                    .ok()
                    .map(|_| u64::from_le_bytes(main).wrapping_add(offset))
            }
        };
        Ok(Some(Self {
            memory,
            gil: gil.and_then(|start| Some(start..start.checked_add(GIL_SIZE)?)),
            layout,
            runtime: symbols.runtime,
            evaluation: symbols.evaluation,
            codes: CodeCache::default(),
            thread_states: HashMap::new(),
            states_read_at: None,
            lock_types: HashMap::new(),
            thread_names: Default::default(),
            counts: PythonCounts::default(),
        }))
    }

    /// "3.11".
    pub fn version(&self) -> String {
        format!("{}.{}", self.layout.version.0, self.layout.version.1)
    }

    /// Whether a futex at `address` is the GIL's (a thread waiting to run Python code).
    pub fn is_gil(&self, address: u64) -> bool {
        self.gil.as_ref().is_some_and(|gil| gil.contains(&address))
    }

    /// Whether `address` (a native frame's, as looked up) is in the evaluation loop.
    pub fn is_evaluation(&self, address: u64) -> bool {
        self.evaluation.iter().any(|range| range.contains(&address))
    }

    /// The Python frames thread `tid` is in now, leaf first (none for a thread that has
    /// no thread state: one that never ran Python, or not yet).
    pub fn thread_frames(&mut self, tid: u32) -> Vec<PythonFrame> {
        let Some(state) = self.thread_state(tid) else {
            return Vec::new();
        };
        let Some(mut frame) = self.current_frame(state) else {
            return Vec::new();
        };
        let mut frames: Vec<PythonFrame> = Vec::new();
        let layout = &self.layout.frame;
        let mut bytes = vec![0u8; layout.size as usize];
        // Frames read, shims included: a torn read may chain shims into a cycle.
        let mut reads = 0;
        while frame != 0 {
            reads += 1;
            if frames.len() == MAX_FRAMES || reads > 2 * MAX_FRAMES {
                self.counts.truncated_stacks += 1;
                break;
            }
            if self.memory.read_exact(frame, &mut bytes).is_err() {
                self.counts.unreadable_frames += 1;
                break;
            }
            let previous = word(&bytes, layout.previous as usize);
            let owner = bytes[layout.owner as usize];
            if layout.is_entry.is_none() && owner == FRAME_OWNED_BY_CSTACK {
                // The shim below an evaluation's outermost frame (3.12+).
                if let Some(last) = frames.last_mut() {
                    last.ends_evaluation = true;
                }
                frame = previous;
                continue;
            }
            let code_address = word(&bytes, layout.code as usize);
            let instruction = word(&bytes, layout.instruction as usize);
            let ends_evaluation = layout.is_entry.is_some_and(|at| bytes[at as usize] != 0);
            let Some(code) = self.codes.get(&self.memory, &self.layout, code_address) else {
                self.counts.unreadable_frames += 1;
                frame = previous;
                continue;
            };
            // A frame being set up has not run its first instruction: not a call yet.
            let started = instruction >= code_address + self.layout.code.code_start;
            if started || owner == FRAME_OWNED_BY_GENERATOR {
                let line = code.line_at(code_address, &self.layout, instruction);
                let globals = word(&bytes, layout.globals as usize);
                frames.push(PythonFrame { address: frame, code, line, globals, ends_evaluation });
            } else if ends_evaluation && let Some(last) = frames.last_mut() {
                last.ends_evaluation = true;
            }
            frame = previous;
        }
        frames
    }

    /// The thread state of native thread `tid`, re-reading the list when it is not known,
    /// or when the one known no longer names the thread: CPython frees a thread state
    /// when a thread it did not start leaves Python (`PyGILState_Release`, a C library's
    /// callback thread), and its memory may hold another's by the next read.
    fn thread_state(&mut self, tid: u32) -> Option<u64> {
        let mut moved = false;
        if let Some(&state) = self.thread_states.get(&tid) {
            let names = self.read_word(state.wrapping_add(self.layout.thread_native_id));
            if names.is_some_and(|native_id| native_id as u32 == tid) {
                return Some(state);
            }
            self.thread_states.remove(&tid);
            moved = true;
        }
        let stale =
            moved || self.states_read_at.is_none_or(|at| at.elapsed() >= THREAD_STATES_REFRESH);
        if stale {
            self.thread_states = self.read_thread_states();
            self.states_read_at = Some(Instant::now());
        }
        self.thread_states.get(&tid).copied()
    }

    /// Every interpreter's thread states, by native thread id.
    fn read_thread_states(&self) -> HashMap<u32, u64> {
        let layout = &self.layout;
        let mut states = HashMap::new();
        // The lists are read while the interpreter may change them: a thread state seen
        // twice (a torn read's cycle) ends its list, which would not end otherwise.
        let mut seen = HashSet::new();
        let mut interpreter = self.read_word(self.runtime + layout.runtime_interpreters_head);
        let mut interpreters = 0;
        while let Some(interp) = interpreter.filter(|&address| address != 0) {
            interpreters += 1;
            let mut state = self.read_word(interp.wrapping_add(layout.interp_threads_head));
            while let Some(thread) = state.filter(|&address| address != 0 && seen.insert(address)) {
                if states.len() >= MAX_THREADS {
                    return states;
                }
                if let Some(tid) = self.read_word(thread.wrapping_add(layout.thread_native_id)) {
                    states.insert(tid as u32, thread);
                }
                state = self.read_word(thread.wrapping_add(layout.thread_next));
            }
            // `PyInterpreterState.next` is its first member.
            interpreter = self.read_word(interp).filter(|_| interpreters < 256);
        }
        states
    }

    fn current_frame(&self, state: u64) -> Option<u64> {
        // The process's words: a wild one wraps, and its read fails.
        match self.layout.current_frame {
            layout::CurrentFrame::ThroughCFrame { cframe, current_frame } => {
                let cframe =
                    self.read_word(state.wrapping_add(cframe)).filter(|&address| address != 0)?;
                self.read_word(cframe.wrapping_add(current_frame))
            }
            layout::CurrentFrame::Direct(offset) => self.read_word(state.wrapping_add(offset)),
        }
        .filter(|&address| address != 0)
    }

    fn read_word(&self, address: u64) -> Option<u64> {
        let mut bytes = [0u8; 8];
        self.memory.read_exact(address, &mut bytes).ok()?;
        Some(u64::from_le_bytes(bytes))
    }
}

/// Whether `image` has a CPython interpreter (its executable or libpython).
pub fn runs_cpython(image: &ProcessImage) -> bool {
    image.modules().iter().any(|module| interpreter_symbols(module).is_some())
}

/// `_PyRuntime`, `Py_Version` and the evaluation loop of `module`, if it is CPython's
/// executable or libpython.
fn interpreter_symbols(module: &crate::stacks::Module) -> Option<InterpreterSymbols> {
    let file_name = module.name().rsplit('/').next().unwrap_or_default();
    if !file_name.starts_with("python") && !file_name.starts_with("libpython") {
        return None;
    }
    let file = object::File::parse(module.file_bytes()).ok()?;
    let (mut runtime, mut version) = (None, None);
    let mut evaluation = Vec::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        let Ok(name) = symbol.name() else { continue };
        let address = symbol.address().wrapping_add(module.bias);
        match name {
            "_PyRuntime" => runtime = Some(address),
            "Py_Version" => version = Some(address),
            "_PyEval_EvalFrameDefault" | "_PyEval_EvalFrameDefault.cold" if symbol.size() > 0 => {
                evaluation.extend(address.checked_add(symbol.size()).map(|end| address..end));
            }
            _ => {}
        }
    }
    evaluation.sort_by_key(|range| range.start);
    evaluation.dedup();
    Some(InterpreterSymbols { runtime: runtime?, version: version?, evaluation })
}

/// Python frames stand in a stack's address list for the evaluation they ran in: as
/// addresses no user code has (the top bits set) that index the process's table of names.
pub const PYTHON_FRAME_BASE: u64 = 0xffff_f000_0000_0000;

/// How a Python frame is named in reports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PythonFrameName {
    /// `co_qualname`: `Handler.report`, `report_stat`.
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
}

impl PythonFrameName {
    /// `report_stat (pypileup.py:15)`: the function with its file's short name and line,
    /// as py-spy names it (the whole path is the frame's file).
    pub fn display(&self) -> String {
        let file = short_file_name(&self.file);
        match self.line {
            Some(line) => format!("{} ({file}:{line})", self.function),
            None => format!("{} ({file})", self.function),
        }
    }
}

/// A module's file as it is imported: from the standard library or a packages directory,
/// its path within it (`http/client.py`, `requests/api.py`); else the file's name.
fn short_file_name(file: &str) -> &str {
    let parts: Vec<&str> = file.split('/').collect();
    let is_library = |index: usize| {
        parts[index].ends_with("-packages")
            || index > 0 && is_standard_library_dir(parts[index - 1], parts[index])
    };
    // The innermost library directory that holds the file (site-packages inside
    // lib/python3.11 wins).
    match (0..parts.len().saturating_sub(1)).rev().find(|&index| is_library(index)) {
        Some(index) => {
            let start: usize = parts[..=index].iter().map(|part| part.len() + 1).sum();
            &file[start..]
        }
        None => parts.last().copied().unwrap_or(file),
    }
}

/// The Python frames of a process's stacks, each name once, by its stand-in address.
/// Shared by the images of one process (a daemon unwinds with one and symbolizes with
/// another), so a clone is the same table.
#[derive(Clone, Debug, Default)]
pub struct PythonFrameTable(Arc<Mutex<FrameNames>>);

#[derive(Debug, Default)]
struct FrameNames {
    names: Vec<PythonFrameName>,
    index: HashMap<PythonFrameName, u64>,
    /// The interpreter the frames come from (or could not), for the report.
    interpreter: Option<PythonInfo>,
}

impl PythonFrameTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, FrameNames> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn address_of(&self, name: PythonFrameName) -> u64 {
        let mut table = self.lock();
        let next = PYTHON_FRAME_BASE + table.names.len() as u64;
        if let Some(&address) = table.index.get(&name) {
            return address;
        }
        table.names.push(name.clone());
        table.index.insert(name, next);
        next
    }

    pub fn get(&self, address: u64) -> Option<PythonFrameName> {
        let index = usize::try_from(address.checked_sub(PYTHON_FRAME_BASE)?).ok()?;
        self.lock().names.get(index).cloned()
    }

    /// The interpreter the frames come from, for the report.
    pub fn interpreter(&self) -> Option<PythonInfo> {
        self.lock().interpreter.clone()
    }

    pub fn set_interpreter(&self, info: PythonInfo) {
        self.lock().interpreter = Some(info);
    }

    /// Changes what is known of the interpreter, if one is.
    pub fn update_interpreter(&self, change: impl FnOnce(&mut PythonInfo)) {
        if let Some(info) = &mut self.lock().interpreter {
            change(info);
        }
    }
}

/// Whether `address` stands for a Python frame.
pub fn is_python_frame_address(address: u64) -> bool {
    address >= PYTHON_FRAME_BASE
}

/// `native` (leaf first) with each evaluation-loop frame replaced by the Python frames
/// it ran (as `py-spy --native` shows them); Python frames beyond the last evaluation
/// the unwinder reached are put at the root end.
pub fn interleave(
    native: &[u64],
    python: &[PythonFrame],
    is_evaluation: impl Fn(u64) -> bool,
    mut address_of: impl FnMut(&PythonFrame) -> u64,
) -> Vec<u64> {
    let mut evaluations = python.split_inclusive(|frame| frame.ends_evaluation);
    let mut stack = Vec::with_capacity(native.len() + python.len());
    for (index, &address) in native.iter().enumerate() {
        let lookup = crate::stacks::lookup_address(address, index > 0);
        if is_evaluation(lookup)
            && let Some(frames) = evaluations.next()
        {
            stack.extend(frames.iter().map(&mut address_of));
        } else {
            stack.push(address);
        }
    }
    for frames in evaluations {
        stack.extend(frames.iter().map(&mut address_of));
    }
    stack
}

/// Whether a Python file is the runtime's (the standard library, frozen modules), whose
/// frames are how a program waits, not where.
pub fn is_runtime_file(file: &str) -> bool {
    if file.starts_with('<') {
        return true; // <frozen importlib._bootstrap>, <string>
    }
    let parts: Vec<&str> = file.split('/').collect();
    let in_standard_library =
        parts.windows(2).any(|pair| is_standard_library_dir(pair[0], pair[1]));
    in_standard_library && !file.contains("-packages/")
}

/// `lib/python3.11` (or `lib64/python3.11`): the standard library's directory, by the
/// directory `part` and its parent.
fn is_standard_library_dir(parent: &str, part: &str) -> bool {
    parent.starts_with("lib")
        && part.strip_prefix("python3.").is_some_and(|minor| {
            !minor.is_empty() && minor.bytes().all(|byte| byte.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_file_names_keep_the_package_path() {
        assert_eq!(short_file_name("/usr/lib/python3.11/http/client.py"), "http/client.py");
        assert_eq!(short_file_name("/usr/lib/python3.11/queue.py"), "queue.py");
        let venv = "/srv/venv/lib/python3.11/site-packages/requests/api.py";
        assert_eq!(short_file_name(venv), "requests/api.py");
        assert_eq!(short_file_name("/srv/app/pypileup.py"), "pypileup.py");
        assert_eq!(short_file_name("pypileup.py"), "pypileup.py");
        assert_eq!(
            short_file_name("<frozen importlib._bootstrap>"),
            "<frozen importlib._bootstrap>"
        );
    }

    #[test]
    fn the_standard_library_and_frozen_modules_are_the_runtime() {
        assert!(is_runtime_file("/usr/lib/python3.11/threading.py"));
        assert!(is_runtime_file("/root/.pyenv/versions/3.11.7/lib/python3.11/queue.py"));
        assert!(is_runtime_file("<frozen importlib._bootstrap>"));
        assert!(!is_runtime_file("/srv/venv/lib/python3.11/site-packages/requests/api.py"));
        assert!(!is_runtime_file("/srv/app/pypileup.py"));
    }
}
