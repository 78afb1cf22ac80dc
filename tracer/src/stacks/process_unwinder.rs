//! One process's stacks, from registers and stack bytes to a `StackKey`-ready list of
//! addresses: the memory-map snapshot and the unwinder together, re-reading the map
//! (rate-limited) when code appears that was mapped after the snapshot. A CPython process's
//! Python frames are read with the stacks of threads blocked now and put where the
//! interpreter runs them.

use super::{MapRefresh, ProcessImage, StackUnwinder, UnwindEnd, UserRegs};
use crate::model::PythonInfo;
use crate::python::{self, PythonFrame, PythonProcess};

/// An unwound stack: addresses leaf first, and whether the walk stopped before the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnwoundAddresses {
    pub addresses: Vec<u64>,
    pub truncated: bool,
    /// How many bytes of the stack copy, from its start, the walk read.
    pub read_bytes: u64,
    /// The stack runs Python code, yet its thread was in no Python frame when they were
    /// read: it ran on since its registers were read, and the stack is not of one moment.
    pub python_frames_gone: bool,
}

pub struct ProcessUnwinder {
    pid: u32,
    image: ProcessImage,
    unwinder: StackUnwinder,
    map_refresh: MapRefresh,
    /// Walks that stopped before the root.
    pub truncated_unwinds: u64,
    /// The process's CPython interpreter, if it runs one we can read.
    python: Option<PythonProcess>,
}

impl ProcessUnwinder {
    pub fn new(pid: u32, image: ProcessImage) -> Self {
        let unwinder = StackUnwinder::new(&image);
        let python = match PythonProcess::detect(pid, &image) {
            Ok(Some(python)) => {
                log::info!(
                    "pid {pid} runs CPython {}: reading its Python frames",
                    python.version()
                );
                let version = python.version();
                image.python_frames.set_interpreter(PythonInfo { version, ..Default::default() });
                Some(python)
            }
            Ok(None) => None,
            Err(err) => {
                log::warn!("pid {pid}: {err}");
                image.python_frames.set_interpreter(PythonInfo {
                    version: err.version(),
                    missing: Some(err.to_string()),
                    ..Default::default()
                });
                None
            }
        };
        Self {
            pid,
            image,
            unwinder,
            map_refresh: MapRefresh::default(),
            truncated_unwinds: 0,
            python,
        }
    }

    /// Says in the report why some stacks have no Python frames (a CPython process only).
    pub fn note_python_frames_missing(&mut self, why: &str) {
        self.image.python_frames.update_interpreter(|info| info.missing = Some(why.to_owned()));
    }

    /// The process's CPython interpreter, if it runs one we can read.
    pub fn python(&mut self) -> Option<&mut PythonProcess> {
        self.python.as_mut()
    }

    /// A CPython process's asyncio tasks pending now (none elsewhere), what could not be
    /// read of them counted in the report's Python line as a thread's frames are.
    pub fn pending_python_tasks(&mut self) -> Vec<crate::python::PendingTask> {
        let Some(python) = &mut self.python else { return Vec::new() };
        let tasks = python.pending_tasks();
        note_python_counts(&mut self.image, python.counts);
        tasks
    }

    /// Thread `tid`'s name in a CPython program, which names its threads itself (the
    /// kernel's `comm` there is the interpreter's for every thread); `None` elsewhere.
    pub fn thread_name(&mut self, tid: u32) -> Option<String> {
        self.python.as_mut()?.thread_name(tid)
    }

    /// As [`ProcessUnwinder::unwind`], for thread `tid` while it is still where `regs`
    /// say: a Python thread's Python frames (read now) replace the interpreter's
    /// evaluation frames. Returns them too (leaf first), to name what the thread waits on.
    pub fn unwind_thread(
        &mut self,
        tid: u32,
        regs: UserRegs,
        stack: &[u8],
    ) -> (UnwoundAddresses, Vec<PythonFrame>) {
        let mut unwound = self.unwind(regs, stack);
        let Some(python) = &mut self.python else {
            return (unwound, Vec::new());
        };
        let frames = python.thread_frames(tid);
        note_python_counts(&mut self.image, python.counts);
        if frames.is_empty() {
            unwound.python_frames_gone =
                unwound.addresses.iter().any(|&address| python.is_evaluation(address));
        } else {
            let table = &self.image.python_frames;
            unwound.addresses = python::interleave(
                &unwound.addresses,
                &frames,
                |address| python.is_evaluation(address),
                |frame| table.address_of(frame.name()),
            );
        }
        (unwound, frames)
    }

    pub fn image(&self) -> &ProcessImage {
        &self.image
    }

    /// `stack` holds the bytes at [regs.sp, regs.sp + stack.len()): a wait's stack, whose
    /// walk stopping short is counted (`truncated_unwinds`).
    pub fn unwind(&mut self, regs: UserRegs, stack: &[u8]) -> UnwoundAddresses {
        let unwound = self.unwind_uncounted(regs, stack);
        if unwound.truncated {
            self.truncated_unwinds += 1;
        }
        unwound
    }

    /// `unwind` for a stack that is not a wait's (a waker's, whose walk stopping short
    /// shows in its frames; a copy walked only to size later copies): not counted.
    pub fn unwind_uncounted(&mut self, regs: UserRegs, stack: &[u8]) -> UnwoundAddresses {
        let mut unwound = self.unwinder.unwind(regs, stack);
        if unwound.end == UnwindEnd::NoModule && self.refresh_map() {
            unwound = self.unwinder.unwind(regs, stack);
        }
        let truncated = unwound.end != UnwindEnd::Complete;
        UnwoundAddresses {
            addresses: unwound.frames,
            truncated,
            read_bytes: unwound.read_bytes,
            python_frames_gone: false,
        }
    }

    /// Picks up libraries mapped since the snapshot; returns whether any were added.
    fn refresh_map(&mut self) -> bool {
        let added = self.map_refresh.refresh(self.pid, &mut self.image) > 0;
        if added {
            self.unwinder.sync_modules(&self.image);
        }
        added
    }
}

/// The interpreter's losses so far, for the report's Python line.
fn note_python_counts(image: &mut ProcessImage, counts: crate::python::PythonCounts) {
    image.python_frames.update_interpreter(|info| {
        info.unreadable_frames = counts.unreadable_frames;
        info.truncated_stacks = counts.truncated_stacks;
    });
}
