//! asyncio's pending tasks, read from outside (CPython 3.11-3.13): every task of
//! `asyncio.tasks` (`_all_tasks`, 3.12+ `_scheduled_tasks`) that is still pending, its
//! coroutine stack (each coroutine's frame, then the one it awaits, to the innermost), and
//! what the innermost awaits: a socket (its endpoint), or the object a standard-library
//! coroutine runs on (an `asyncio.Lock`, `Event`, `Queue`), named as the program holds it.
//! The idea of CPython 3.14's `python -m asyncio pstree`, without entering the process.

use std::collections::BTreeMap;

use tracer_common::WaitKind;

use super::code::read_str;
use super::layout::CoroutineAwait;
use super::{PythonFrame, PythonProcess, is_runtime_file};
use crate::memory::word;
use crate::model::{ProfileStack, WaitObject, WaitStats};
use crate::objects::WaitObjects;
use crate::stacks::Frame;

/// Tasks read at most (a torn set must not run away).
const MAX_TASKS: u64 = 1 << 20;
/// Coroutines followed per task at most.
const MAX_AWAIT_DEPTH: usize = 256;
/// `PySetObject.mask` and `.table`; a set entry is (key, hash).
const SET_MASK: u64 = 32;
const SET_TABLE: u64 = 40;
/// `PyWeakReference.wr_object`, a socket object's `sock_fd`.
const WEAKREF_OBJECT: u64 = 16;
const SOCKET_FD: u64 = 16;

/// One pending task: its coroutine stack and what it awaits.
#[derive(Clone, Debug)]
pub struct PendingTask {
    /// `Task-12`, or the name the program gave it.
    pub name: String,
    /// The coroutine frames, innermost first (as a thread's Python frames).
    pub frames: Vec<PythonFrame>,
    pub awaits: Awaited,
}

/// What a pending task's innermost coroutine waits on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Awaited {
    /// A socket, by descriptor, in the direction the coroutine uses it.
    Socket {
        kind: WaitKind,
        fd: u32,
    },
    /// An object named as the program holds it (`Lock LOCK`), or a future's type.
    Object(String),
    Nothing,
}

impl PythonProcess {
    /// Every pending asyncio task of the process (none if it never imported asyncio).
    pub fn pending_tasks(&mut self) -> Vec<PendingTask> {
        let task_layout = self.layout.task;
        let Some(all_tasks) = self.module_global("asyncio.tasks", task_layout.registry) else {
            return Vec::new();
        };
        let tasks = self.weak_set_members(all_tasks);
        let mut pending = Vec::new();
        for task in tasks {
            if self.type_name(task).as_deref() != Some("_asyncio.Task") {
                continue; // a task of asyncio's Python implementation, or a subclass
            }
            let mut fields = vec![0u8; task_layout.size];
            if self.memory.read_exact(task, &mut fields).is_err() {
                // A task freed as it was read: its frames are not in the report.
                self.counts.unreadable_frames += 1;
                continue;
            }
            let state =
                u32::from_le_bytes(fields[task_layout.state..][..4].try_into().unwrap_or_default());
            if state != 0 {
                continue; // done or cancelled
            }
            let name = self
                .task_name(word(&fields, task_layout.name))
                .unwrap_or_else(|| format!("task at {task:#x}"));
            let frames = self.coroutine_stack(word(&fields, task_layout.coro));
            let awaits = self.awaited(&frames, word(&fields, task_layout.fut_waiter));
            pending.push(PendingTask { name, frames, awaits });
        }
        pending
    }

    /// A task's name: a string, or (3.12+, until `get_name()` formats it) the number
    /// of `Task-12`.
    fn task_name(&self, name: u64) -> Option<String> {
        match self.type_name(name)?.as_str() {
            "int" => self.small_int(name).map(|number| format!("Task-{number}")),
            _ => read_str(&self.memory, &self.layout, name),
        }
    }

    /// The live objects of a `weakref.WeakSet` (its `data`: a set of weak references).
    fn weak_set_members(&self, weak_set: u64) -> Vec<u64> {
        let Some(data) = self.attribute(weak_set, "data") else {
            return Vec::new();
        };
        // The process's words: a wild one wraps, and its read fails (or reads no slots).
        let (Some(mask), Some(table)) = (
            self.read_word(data.wrapping_add(SET_MASK)),
            self.read_word(data.wrapping_add(SET_TABLE)),
        ) else {
            return Vec::new();
        };
        let slots = mask.wrapping_add(1).min(MAX_TASKS);
        let mut entries = vec![0u8; slots as usize * 16];
        if self.memory.read_exact(table, &mut entries).is_err() {
            return Vec::new();
        }
        (0..slots as usize)
            .map(|slot| word(&entries, slot * 16))
            .filter(|&key| key != 0)
            // Free slots hold the set's dummy; references are `weakref.ReferenceType`.
            .filter(|&key| self.type_name(key).is_some_and(|name| name.ends_with("ReferenceType")))
            .filter_map(|reference| self.read_word(reference + WEAKREF_OBJECT))
            .filter(|&object| object != 0)
            .collect()
    }

    /// A coroutine's frame, then each coroutine (or generator) it awaits: innermost first.
    fn coroutine_stack(&mut self, coroutine: u64) -> Vec<PythonFrame> {
        let layout = &self.layout;
        let mut frames = Vec::new();
        let mut object = coroutine;
        loop {
            let is_coroutine = self
                .type_name(object)
                .is_some_and(|name| matches!(name.as_str(), "coroutine" | "generator"));
            if !is_coroutine {
                log::debug!("await chain ends at {object:#x} ({:?})", self.type_name(object));
                break;
            }
            if frames.len() == MAX_AWAIT_DEPTH {
                // Another coroutine is awaited past the depth we read.
                self.counts.truncated_stacks += 1;
                break;
            }
            let mut state = [0u8; 1];
            if self.memory.read_exact(object + layout.gen_frame_state, &mut state).is_err() {
                self.counts.unreadable_frames += 1;
                break;
            }
            let state = state[0] as i8;
            let suspended = match layout.coroutine_await {
                CoroutineAwait::NextResume { suspended, .. } => state == suspended,
                CoroutineAwait::State { suspended, awaiting } => {
                    state == suspended || state == awaiting
                }
            };
            if !suspended {
                break;
            }
            let frame = object + layout.gen_iframe;
            let mut bytes = vec![0u8; layout.frame.size as usize];
            if self.memory.read_exact(frame, &mut bytes).is_err() {
                self.counts.unreadable_frames += 1;
                break;
            }
            let code_address = word(&bytes, layout.frame.code as usize);
            let instruction = word(&bytes, layout.frame.instruction as usize);
            let Some(code) = self.codes.get(&self.memory, layout, code_address) else {
                self.counts.unreadable_frames += 1;
                break;
            };
            let line = code.line_at(code_address, layout, instruction);
            let globals = word(&bytes, layout.frame.globals as usize);
            frames.push(PythonFrame {
                address: frame,
                code,
                line,
                globals,
                ends_evaluation: false,
            });
            // Awaiting: what it awaits is on top of the frame's stack.
            let mut next = [0u8; 2];
            let awaiting = match layout.coroutine_await {
                CoroutineAwait::NextResume { resume, .. } => {
                    self.memory.read_exact(instruction.wrapping_add(2), &mut next).is_ok()
                        && resume.contains(&next[0])
                        && next[1] >= 2
                }
                CoroutineAwait::State { awaiting, .. } => state == awaiting,
            };
            let stacktop = u32::from_le_bytes(
                bytes[layout.frame.stacktop as usize..][..4].try_into().unwrap_or_default(),
            );
            if !awaiting || stacktop == 0 {
                log::debug!("coroutine {object:#x} awaits nothing ({next:?}, stacktop {stacktop})");
                break;
            }
            let top = frame + layout.frame.localsplus + 8 * (u64::from(stacktop) - 1);
            match self.read_word(top) {
                Some(awaited) if awaited != 0 => object = awaited,
                _ => break,
            }
        }
        frames.reverse();
        frames
    }

    /// What the innermost coroutine of a task waits on.
    fn awaited(&mut self, frames: &[PythonFrame], future: u64) -> Awaited {
        if let Some(socket) = self.awaited_socket(frames) {
            return socket;
        }
        if let Some(object) = self.waited_object(frames, None) {
            return Awaited::Object(object);
        }
        match self.type_name(future).filter(|_| future != 0) {
            Some(name) => Awaited::Object(name.rsplit('.').next().unwrap_or(&name).to_owned()),
            None => Awaited::Nothing,
        }
    }

    /// A socket among the locals of the runtime's coroutines the program's innermost one
    /// awaits (not the program's own: a listener it keeps is not what it waits on), or
    /// held by their `self` (a transport's `_sock`, a stream's `_transport._sock`); its
    /// direction from the innermost coroutine's name.
    fn awaited_socket(&self, frames: &[PythonFrame]) -> Option<Awaited> {
        let site = frames.iter().position(|frame| !is_runtime_file(&frame.code.filename))?;
        let fd = frames[..site].iter().find_map(|frame| {
            let locals = self.locals(frame);
            let socket = locals.iter().map(|(_, value)| *value).find(|&v| self.is_socket(v));
            socket.or_else(|| {
                let this = locals.iter().find(|(name, _)| name == "self")?.1;
                let transport = self.attribute(this, "_transport").unwrap_or(this);
                self.attribute(transport, "_sock").filter(|&sock| self.is_socket(sock))
            })
        });
        let fd = self.read_word(fd? + SOCKET_FD)? as u32;
        let innermost = frames.first()?.code.qualname.to_ascii_lowercase();
        let kind = if innermost.contains("accept") {
            WaitKind::Accept
        } else if innermost.contains("connect") {
            WaitKind::Connect
        } else if ["send", "write", "drain"].iter().any(|verb| innermost.contains(verb)) {
            WaitKind::Send
        } else {
            WaitKind::Recv
        };
        Some(Awaited::Socket { kind, fd })
    }

    fn is_socket(&self, object: u64) -> bool {
        object != 0
            && self
                .type_name(object)
                .is_some_and(|name| name == "socket" || name == "_socket.socket")
    }
}

/// The pending tasks as stacks of kind `task`, one per coroutine stack and object, each
/// task counted once (by its number, `Task-12` → 12). Their ages are not known.
pub fn task_stacks(tasks: &[PendingTask], objects: &mut WaitObjects) -> Vec<ProfileStack> {
    let mut groups: BTreeMap<(Vec<String>, String), (Vec<Frame>, WaitStats)> = BTreeMap::new();
    for (index, task) in tasks.iter().enumerate() {
        let object = match &task.awaits {
            Awaited::Socket { kind, fd } => match objects.resolve(*kind, u64::from(*fd)) {
                Some((kind, WaitObject::Endpoint(endpoint))) => {
                    format!("{} {endpoint}", kind.name())
                }
                _ => format!("{} socket", kind.name()),
            },
            Awaited::Object(object) => object.clone(),
            Awaited::Nothing => "nothing".to_owned(),
        };
        // Root first, as every profile stack.
        let frames: Vec<Frame> = task
            .frames
            .iter()
            .rev()
            .map(|frame| Frame::python(frame.name(), frame.address))
            .collect();
        let names: Vec<String> = frames.iter().map(|frame| frame.name.clone()).collect();
        let number = task
            .name
            .strip_prefix("Task-")
            .and_then(|number| number.parse().ok())
            .unwrap_or(u32::MAX - index as u32);
        let (_, stats) =
            groups.entry((names, object)).or_insert_with(|| (frames, WaitStats::default()));
        stats.add(u64::from(number), 0);
        stats.lower_bound = true;
    }
    groups
        .into_iter()
        .map(|((_, object), (frames, stats))| ProfileStack {
            frames,
            kind: WaitKind::Task,
            object: Some(object),
            truncated: false,
            in_progress: true,
            stats,
            process: None,
        })
        .collect()
}
