//! Python threads' names (`threading.Thread(name=…)`, by default `Thread-3 (handler)`),
//! read from `threading._active`: the kernel names every thread of a Python program after
//! the interpreter, so without these a report's threads are all `python3`.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::code::read_str;
use super::{PythonProcess, THREAD_STATES_REFRESH};

/// Threads named at most: `_active` of a program that leaks threads stays readable.
const MAX_NAMED_THREADS: usize = 1 << 16;

/// Threads remembered as not Python's at most (then forgotten, to be looked up again).
const MAX_UNNAMED: usize = 1 << 16;

/// The names read, by native thread id, and where `threading._active` is once found (the
/// module keeps that dict for the life of the process).
#[derive(Default)]
pub struct ThreadNames {
    names: HashMap<u32, String>,
    read_at: Option<Instant>,
    active: Option<u64>,
    /// Threads a fresh read did not name (a C library's own threads, or none of a program
    /// that never imports threading): not worth a read of every thread's name each time
    /// one of them is seen.
    unnamed: HashSet<u32>,
}

impl PythonProcess {
    /// The Python name of native thread `tid`, if the threading module knows it: a thread
    /// seen for the first time re-reads the names, at most every `THREAD_STATES_REFRESH`.
    pub fn thread_name(&mut self, tid: u32) -> Option<String> {
        let known = &self.thread_names;
        if let Some(name) = known.names.get(&tid) {
            return Some(name.clone());
        }
        if known.unnamed.contains(&tid)
            || known.read_at.is_some_and(|at| at.elapsed() < THREAD_STATES_REFRESH)
        {
            return None;
        }
        self.thread_names.names = self.read_thread_names();
        self.thread_names.read_at = Some(Instant::now());
        let name = self.thread_names.names.get(&tid).cloned();
        if name.is_none() {
            let unnamed = &mut self.thread_names.unnamed;
            if unnamed.len() >= MAX_UNNAMED {
                unnamed.clear();
            }
            unnamed.insert(tid);
        }
        name
    }

    /// Every `threading.Thread` of `_active` with its native id and name (none before
    /// the program imports threading).
    fn read_thread_names(&mut self) -> HashMap<u32, String> {
        let Some(active) = self.active_threads() else {
            return HashMap::new();
        };
        // The attribute names are interned strings every instance shares: read each once.
        let mut key_names: HashMap<u64, Option<String>> = HashMap::new();
        let mut names = HashMap::new();
        for (_, thread) in self.dict_entries(active).into_iter().take(MAX_NAMED_THREADS) {
            let (mut native_id, mut name) = (None, None);
            for (key, value) in self.attributes(thread) {
                let key = key_names
                    .entry(key)
                    .or_insert_with(|| read_str(&self.memory, &self.layout, key));
                match key.as_deref() {
                    Some("_native_id") => native_id = Some(value),
                    Some("_name") => name = Some(value),
                    _ => {}
                }
            }
            let tid = native_id.and_then(|id| self.small_int(id));
            let name = name.and_then(|name| read_str(&self.memory, &self.layout, name));
            if let (Some(tid), Some(name)) = (tid.and_then(|tid| u32::try_from(tid).ok()), name) {
                names.insert(tid, name);
            }
        }
        names
    }

    /// `threading._active`, kept once found.
    fn active_threads(&mut self) -> Option<u64> {
        if self.thread_names.active.is_none() {
            self.thread_names.active = self.module_global("threading", "_active");
        }
        self.thread_names.active
    }
}
