//! Where CPython keeps what we read, per version (x86_64, release builds with the GIL).
//!
//! 3.11 and 3.12 from their headers (`Include/internal/pycore_{runtime,interp,frame}.h`,
//! `Include/cpython/{pystate,code,unicodeobject,genobject}.h`), checked against live
//! interpreters with ctypes. 3.13 publishes most of them in `_PyRuntime.debug_offsets`
//! (`_Py_DebugOffsets`), which are read from the process and preferred to ours.

use crate::memory::word;

/// The byte offsets the reader needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub version: (u8, u8),
    /// `_PyRuntime.interpreters.head`.
    pub runtime_interpreters_head: u64,
    /// `PyInterpreterState.threads.head`, `.modules` (3.12+: `.imports.modules`).
    pub interp_threads_head: u64,
    pub interp_modules: u64,
    /// `PyThreadState.next`, `.native_thread_id`.
    pub thread_next: u64,
    pub thread_native_id: u64,
    pub current_frame: CurrentFrame,
    pub frame: FrameLayout,
    pub code: CodeLayout,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's bytes start.
    pub ascii_data: u64,
    /// `sizeof(PyCompactUnicodeObject)`: where a compact non-ASCII string's code points start.
    pub compact_data: u64,
    /// A generator's (coroutine's) `gi_frame_state` (i8) and embedded `gi_iframe`.
    pub gen_frame_state: u64,
    pub gen_iframe: u64,
    /// How a suspended coroutine shows that it awaits what is on top of its stack.
    pub coroutine_await: CoroutineAwait,
    /// asyncio's C task, and where the pending ones are listed.
    pub task: TaskLayout,
    /// Where an instance keeps attributes that are not in a dict of its own (its managed
    /// "values"), and its type's `ht_cached_keys`, which name them.
    pub managed_values: ManagedValues,
    pub type_cached_keys: u64,
    /// `PyDictValues.values`, from the pointer.
    pub dict_values_start: u64,
    /// Where the main interpreter's GIL (`struct _gil_runtime_state`) is.
    pub gil: Gil,
}

/// How a coroutine (or generator) suspended at an await is told from one suspended at a
/// plain yield (CPython's `_PyGen_yf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoroutineAwait {
    /// 3.11, 3.12: `gi_frame_state` is `suspended`, and the next instruction is a RESUME
    /// (`resume`: its opcode and its quickened or instrumented form) with an oparg of 2
    /// or more.
    NextResume { suspended: i8, resume: [u8; 2] },
    /// 3.13: `gi_frame_state` is `suspended` at a yield, `awaiting` at an await
    /// (`FRAME_SUSPENDED_YIELD_FROM`).
    State { suspended: i8, awaiting: i8 },
}

/// asyncio's C `TaskObj` (`Modules/_asynciomodule.c`): the future's `fut_state` (0 while
/// pending), then after the future's fields `task_fut_waiter`, `task_coro`, `task_name`;
/// and the `asyncio.tasks` global that holds the pending tasks (a `WeakSet`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskLayout {
    pub state: usize,
    pub fut_waiter: usize,
    pub coro: usize,
    pub name: usize,
    /// Bytes read per task (to its name).
    pub size: usize,
    pub registry: &'static str,
}

/// Where an instance of a class with `Py_TPFLAGS_MANAGED_DICT` keeps its attributes while
/// no dict was made for it (`Include/internal/pycore_object.h` of each version).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagedValues {
    /// 3.11: a pointer to the values 4 words before the object; the dict, once made,
    /// 3 words before.
    PointerBefore,
    /// 3.12: 3 words before the object, the dict, or the values' address minus one (odd:
    /// `PyDictOrValues`).
    TaggedBefore,
    /// 3.13: right after the object's fixed part (`tp_basicsize`) while their `valid`
    /// byte says so, for types with `Py_TPFLAGS_INLINE_VALUES`; else the dict, 3 words
    /// before.
    Inline,
}

/// Where the GIL lives: in `_PyRuntime.ceval` (3.11), or in the main interpreter's state
/// (3.12+, one per interpreter). Found by its `interval` (`sys.setswitchinterval`) in live
/// interpreters: 3.11 `_PyRuntime+0x168`, 3.12 main interpreter `+0x410`, 3.13 `+7752`
/// (its debug offsets' `gil_runtime_state` too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gil {
    InRuntime(u64),
    InMainInterpreter(u64),
}

/// `sizeof(struct _gil_runtime_state)`: interval, last holder, locked, switch number, two
/// condition variables and two mutexes.
pub const GIL_SIZE: u64 = 208;

/// How a thread state leads to its innermost frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurrentFrame {
    /// `tstate->cframe->current_frame` (3.11, 3.12).
    ThroughCFrame { cframe: u64, current_frame: u64 },
    /// `tstate->current_frame` (3.13).
    Direct(u64),
}

/// `_PyInterpreterFrame`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    pub code: u64,
    pub previous: u64,
    pub globals: u64,
    /// `prev_instr` (3.11, 3.12) or `instr_ptr` (3.13): both count from the code's first unit.
    pub instruction: u64,
    pub stacktop: u64,
    pub owner: u64,
    /// 3.11's `is_entry`: the outermost frame of one C-level evaluation. Later versions
    /// put a frame owned by the C stack below it instead.
    pub is_entry: Option<u64>,
    pub localsplus: u64,
    /// Bytes read per frame (up to `localsplus`).
    pub size: u64,
}

/// `_PyInterpreterFrame.owner` of the shim frame between two C-level evaluations (3.12+).
pub const FRAME_OWNED_BY_CSTACK: u8 = 3;
pub const FRAME_OWNED_BY_GENERATOR: u8 = 1;

/// `PyCodeObject`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub argcount: u64,
    pub firstlineno: u64,
    pub nlocalsplus: u64,
    pub localsplusnames: u64,
    pub filename: u64,
    pub name: u64,
    pub qualname: u64,
    pub linetable: u64,
    /// `co_code_adaptive`: the first code unit.
    pub code_start: u64,
}

/// Offsets every version shares: `ob_type`, `tp_name`, a tuple's items, a bytes object's
/// bytes, a dict's keys and values.
pub const OB_TYPE: u64 = 8;
pub const VAR_SIZE: u64 = 16;
pub const TP_NAME: u64 = 24;
pub const TUPLE_ITEMS: u64 = 24;
pub const BYTES_DATA: u64 = 32;
pub const UNICODE_LENGTH: u64 = 16;
pub const UNICODE_STATE: u64 = 32;
pub const DICT_KEYS: u64 = 32;
pub const DICT_VALUES: u64 = 40;

impl Layout {
    /// The layout of `PY_VERSION_HEX` `version`, `None` for versions we do not know.
    /// `runtime` is the start of `_PyRuntime` as read (3.13's debug offsets).
    pub fn for_version(version: u64, runtime: &[u8]) -> Option<Layout> {
        let major_minor = ((version >> 24) as u8, (version >> 16) as u8);
        match major_minor {
            (3, 11) => Some(python_3_11()),
            (3, 12) => Some(python_3_12()),
            (3, 13) => python_3_13(runtime),
            _ => None,
        }
    }
}

fn python_3_11() -> Layout {
    Layout {
        version: (3, 11),
        runtime_interpreters_head: 40,
        interp_threads_head: 16,
        interp_modules: 888,
        thread_next: 8,
        thread_native_id: 160,
        current_frame: CurrentFrame::ThroughCFrame { cframe: 56, current_frame: 8 },
        frame: FrameLayout {
            code: 32,
            previous: 48,
            globals: 8,
            instruction: 56,
            stacktop: 64,
            owner: 69,
            is_entry: Some(68),
            localsplus: 72,
            size: 72,
        },
        code: CodeLayout {
            argcount: 56,
            firstlineno: 72,
            nlocalsplus: 76,
            localsplusnames: 96,
            filename: 112,
            name: 120,
            qualname: 128,
            linetable: 136,
            code_start: 184,
        },
        ascii_data: 48,
        compact_data: 72,
        gen_frame_state: 75,
        gen_iframe: 80,
        // RESUME and RESUME_QUICK.
        coroutine_await: CoroutineAwait::NextResume { suspended: -1, resume: [151, 150] },
        task: TaskLayout {
            state: 88,
            fut_waiter: 128,
            coro: 136,
            name: 144,
            size: 152,
            registry: "_all_tasks",
        },
        // sizeof(PyTypeObject) 408, then as_async, as_number, as_mapping, as_sequence,
        // as_buffer, ht_name, ht_slots, ht_qualname.
        managed_values: ManagedValues::PointerBefore,
        type_cached_keys: 872,
        dict_values_start: 0,
        gil: Gil::InRuntime(0x168),
    }
}

fn python_3_12() -> Layout {
    Layout {
        version: (3, 12),
        runtime_interpreters_head: 40,
        interp_threads_head: 72,
        interp_modules: 944,
        thread_next: 8,
        thread_native_id: 144,
        current_frame: CurrentFrame::ThroughCFrame { cframe: 56, current_frame: 0 },
        frame: FrameLayout {
            code: 0,
            previous: 8,
            globals: 24,
            instruction: 56,
            stacktop: 64,
            owner: 70,
            is_entry: None,
            localsplus: 72,
            size: 72,
        },
        code: CodeLayout {
            argcount: 52,
            firstlineno: 68,
            nlocalsplus: 72,
            localsplusnames: 96,
            filename: 112,
            name: 120,
            qualname: 128,
            linetable: 136,
            code_start: 192,
        },
        ascii_data: 40,
        compact_data: 56,
        gen_frame_state: 67,
        gen_iframe: 72,
        // RESUME and INSTRUMENTED_RESUME.
        coroutine_await: CoroutineAwait::NextResume { suspended: -1, resume: [151, 240] },
        // 3.11's task; the tasks that ran a step are in `_scheduled_tasks` (and an eager
        // one, while it runs its first, in `_eager_tasks`: never pending).
        task: TaskLayout { registry: "_scheduled_tasks", ..python_3_11().task },
        managed_values: ManagedValues::TaggedBefore,
        // PyTypeObject grew `tp_watched` (8 bytes with its padding).
        type_cached_keys: 880,
        dict_values_start: 0,
        gil: Gil::InMainInterpreter(0x410),
    }
}

/// 3.13: 3.12's frames and code objects but for where the code starts, its own runtime,
/// interpreter and thread states; then every offset `_Py_DebugOffsets` publishes, taken
/// from the process.
fn python_3_13(runtime: &[u8]) -> Option<Layout> {
    let python_3_12 = python_3_12();
    let mut layout = Layout {
        version: (3, 13),
        runtime_interpreters_head: 632,
        interp_threads_head: 7344,
        interp_modules: 7656,
        thread_native_id: 160,
        current_frame: CurrentFrame::Direct(72),
        code: CodeLayout { code_start: 200, ..python_3_12.code },
        coroutine_await: CoroutineAwait::State { suspended: -2, awaiting: -1 },
        // The future's `fut_cancelled_exc` moved before its state, its log and blocking
        // flags became bit fields, and `dict` went.
        task: TaskLayout {
            state: 96,
            fut_waiter: 112,
            coro: 120,
            name: 128,
            size: 136,
            registry: "_scheduled_tasks",
        },
        // `PyDictValues` begins with its capacity, size and flags.
        managed_values: ManagedValues::Inline,
        dict_values_start: 8,
        gil: Gil::InMainInterpreter(7752),
        ..python_3_12
    };
    if let Some(debug) = DebugOffsets::read(runtime) {
        if debug.free_threaded() {
            // Every object is laid out differently without the GIL.
            return None;
        }
        // The offsets are read from the process's writable memory: ones that cannot be a
        // struct's (corrupt, or written to mislead) would size the reads or index past them.
        let mut read = layout.clone();
        debug.apply(&mut read);
        match plausible(&read) {
            true => layout = read,
            false => log::warn!("CPython's debug offsets are out of bounds: 3.13's own used"),
        }
    }
    Some(layout)
}

/// No offset read from `_Py_DebugOffsets` lies past any struct this reads (the
/// interpreter's state is some kilobytes), the two that size a read's buffer (a frame's,
/// a code object's header) are a frame's and a header's size, and a frame's bytes read
/// hold every field read from them.
fn plausible(layout: &Layout) -> bool {
    const MAX_OFFSET: u64 = 1 << 20;
    const MAX_READ: u64 = 4096;
    let frame = &layout.frame;
    let code = &layout.code;
    let offsets = [
        layout.runtime_interpreters_head,
        layout.interp_threads_head,
        layout.interp_modules,
        layout.thread_next,
        layout.thread_native_id,
        frame.previous,
        frame.code,
        frame.instruction,
        frame.localsplus,
        frame.owner,
        code.filename,
        code.name,
        code.qualname,
        code.linetable,
        code.firstlineno,
        code.argcount,
        code.localsplusnames,
        code.code_start,
        layout.ascii_data,
    ];
    let current_frame_ok = match layout.current_frame {
        CurrentFrame::Direct(offset) => offset < MAX_OFFSET,
        CurrentFrame::ThroughCFrame { .. } => true,
    };
    // Each field's end, saturated: the offsets are the process's words until checked.
    let frame_fields = [
        (frame.previous, 8),
        (frame.code, 8),
        (frame.instruction, 8),
        (frame.owner, 1),
        (frame.stacktop, 4),
        (frame.globals, 8),
    ];
    offsets.iter().all(|&offset| offset < MAX_OFFSET)
        && frame.size <= MAX_READ
        && code.code_start <= MAX_READ
        && current_frame_ok
        && frame_fields.iter().all(|&(offset, size)| offset.saturating_add(size) <= frame.size)
}

/// `_Py_DebugOffsets` (3.13): the first member of `_PyRuntime`, "xdebugpy" then u64s.
struct DebugOffsets<'a>(&'a [u8]);

/// Bytes of `_PyRuntime` read to find the debug offsets.
pub const DEBUG_OFFSETS_SIZE: usize = 584;

impl<'a> DebugOffsets<'a> {
    fn read(runtime: &'a [u8]) -> Option<Self> {
        (runtime.len() >= DEBUG_OFFSETS_SIZE && runtime.starts_with(b"xdebugpy"))
            .then_some(Self(runtime))
    }

    fn at(&self, offset: usize) -> u64 {
        word(self.0, offset)
    }

    fn apply(&self, layout: &mut Layout) {
        layout.runtime_interpreters_head = self.at(40);
        layout.interp_threads_head = self.at(72);
        layout.interp_modules = self.at(88);
        layout.thread_next = self.at(168);
        layout.current_frame = CurrentFrame::Direct(self.at(184));
        layout.thread_native_id = self.at(200);
        layout.frame.previous = self.at(232);
        layout.frame.code = self.at(240);
        layout.frame.instruction = self.at(248);
        layout.frame.localsplus = self.at(256);
        layout.frame.size = layout.frame.localsplus;
        layout.frame.owner = self.at(264);
        layout.code.filename = self.at(280);
        layout.code.name = self.at(288);
        layout.code.qualname = self.at(296);
        layout.code.linetable = self.at(304);
        layout.code.firstlineno = self.at(312);
        layout.code.argcount = self.at(320);
        layout.code.localsplusnames = self.at(328);
        layout.code.code_start = self.at(344);
        layout.ascii_data = self.at(560);
    }

    /// A free-threaded build (3.13t), whose objects are laid out differently.
    fn free_threaded(&self) -> bool {
        self.at(16) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `_Py_DebugOffsets` as CPython 3.13 writes it (the offsets `apply` reads, from its
    /// own table), with `change` applied to its bytes.
    fn runtime_with(change: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let own = python_3_13(&[]).expect("3.13's own table");
        let mut runtime = vec![0u8; DEBUG_OFFSETS_SIZE];
        runtime[..8].copy_from_slice(b"xdebugpy");
        let CurrentFrame::Direct(current_frame) = own.current_frame else {
            panic!("3.13 reads its current frame directly")
        };
        let frame = &own.frame;
        let code = &own.code;
        for (at, value) in [
            (40, own.runtime_interpreters_head),
            (72, own.interp_threads_head),
            (88, own.interp_modules),
            (168, own.thread_next),
            (184, current_frame),
            (200, own.thread_native_id),
            (232, frame.previous),
            (240, frame.code),
            (248, frame.instruction),
            (256, frame.localsplus),
            (264, frame.owner),
            (280, code.filename),
            (288, code.name),
            (296, code.qualname),
            (304, code.linetable),
            (312, code.firstlineno),
            (320, code.argcount),
            (328, code.localsplusnames),
            (344, code.code_start),
            (560, own.ascii_data),
        ] {
            runtime[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        change(&mut runtime);
        runtime
    }

    #[test]
    fn debug_offsets_out_of_bounds_give_way_to_the_versions_own() {
        let own = python_3_13(&[]).expect("3.13's own table");
        assert_eq!(python_3_13(&runtime_with(|_| {})), Some(own.clone()), "the same offsets");
        // A frame of 1 MiB: its bytes would be allocated at every read.
        let huge =
            runtime_with(|runtime| runtime[256..264].copy_from_slice(&(1u64 << 20).to_le_bytes()));
        assert_eq!(python_3_13(&huge), Some(own.clone()));
        // An owner past the frame's bytes read would index past them.
        let owner =
            runtime_with(|runtime| runtime[264..272].copy_from_slice(&200u64.to_le_bytes()));
        assert_eq!(python_3_13(&owner), Some(own.clone()));
        // Plausible offsets other than 3.13's own are taken.
        let moved = runtime_with(|runtime| {
            runtime[200..208].copy_from_slice(&(own.thread_native_id + 8).to_le_bytes())
        });
        let read = python_3_13(&moved).expect("a layout");
        assert_eq!(read.thread_native_id, own.thread_native_id + 8);
    }
}
