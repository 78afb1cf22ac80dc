//! Goroutines as the common model's stacks: one `ProfileStack` per (stack, wait reason,
//! object), of kind [`WaitKind::Goroutine`], its object the Go wait reason and, for an IO
//! wait, the endpoint (`IO wait 127.0.0.1:5432`). Names, files, lines and inlined calls
//! come from `.gopclntab`. The runtime's own system goroutines are left out and counted.

use std::collections::HashMap;
use std::sync::Arc;

use tracer_common::WaitKind;

use super::{
    binary::GoBinary,
    goroutines::{Goroutine, IN_SYSCALL},
    pclntab::GoLocation,
    stack_maps::StackMaps,
};
use crate::{
    model::{GO_SYSCALL, ProfileStack, WaitStats},
    probes::golang::GoWaitTotal,
    stacks::Frame,
};

/// Go's own system goroutines start in package runtime, except the main goroutine
/// (`runtime.isSystemGoroutine`).
const USER_RUNTIME_ROOTS: &[&str] = &["runtime.main", "runtime.handleAsyncEvent"];

/// Stacks of goroutines, and what was left out of them.
#[derive(Debug, Default)]
pub struct GoStacks {
    pub stacks: Vec<ProfileStack>,
    /// Goroutines (in a snapshot) or waits (in a recording) of the runtime's own system
    /// goroutines: the GC workers, the sweeper, the finalizers, … (not shown).
    pub runtime_hidden: u64,
    /// Goroutines whose walk stopped before their start function.
    pub truncated: u64,
}

/// Names the process addresses of one Go executable, once per address.
pub struct GoNamer<'a> {
    binary: &'a GoBinary<'a>,
    bias: u64,
    /// The executable's file name (every frame's module).
    module: String,
    /// By (address, how far back it is looked up): the frames carry the address itself.
    cache: HashMap<(u64, u64), Vec<Frame>>,
}

impl<'a> GoNamer<'a> {
    pub fn new(binary: &'a GoBinary<'a>, bias: u64, module: &str) -> Self {
        Self { binary, bias, module: module.to_owned(), cache: HashMap::new() }
    }

    /// The executable's stack maps, at its place in the process.
    pub fn stack_maps(&self) -> StackMaps<'a> {
        StackMaps::new(&self.binary.pclntab, self.bias)
    }

    /// The frames of the code at process address `pc` (looked up at `pc - back`: 1 for a
    /// return address, whose call is one byte back), innermost inlined call first.
    fn frames(&mut self, pc: u64, back: u64) -> &[Frame] {
        let Self { binary, bias, module, cache } = self;
        cache.entry((pc, back)).or_insert_with(|| {
            frames_of(binary, pc.wrapping_sub(*bias).wrapping_sub(back), pc, module)
        })
    }

    /// The frames of the return address `pc` (the call one byte back), innermost inlined
    /// call first.
    pub fn frames_at_return(&mut self, pc: u64) -> &[Frame] {
        self.frames(pc, 1)
    }

    /// The process address where the function containing the return address `pc`
    /// begins (what Go's `func+0x…` offsets count from).
    pub fn entry(&self, pc: u64) -> Option<u64> {
        let link_pc = pc.wrapping_sub(self.bias).wrapping_sub(1);
        self.binary.pclntab.frames(link_pc).first().map(|at| at.entry.wrapping_add(self.bias))
    }

    /// Whether the function containing the return address `pc` is a wrapper the
    /// compiler made (of kind `wrapper`: see `Pclntab::wrapper_func_id`).
    pub fn is_wrapper(&self, pc: u64, wrapper: u8) -> bool {
        let link_pc = pc.wrapping_sub(self.bias).wrapping_sub(1);
        self.binary.pclntab.func_id(link_pc) == Some(wrapper)
    }

    /// The `funcID` of the compiler's wrappers in this binary, if found.
    pub fn wrapper_func_id(&self) -> Option<u8> {
        self.binary.pclntab.wrapper_func_id()
    }

    /// The name of wait reason `reason` (`syscall` for a goroutine in a system call, as
    /// Go's tracebacks say).
    pub fn wait_reason(&self, reason: u8) -> String {
        if reason == IN_SYSCALL {
            return GO_SYSCALL.to_owned();
        }
        match self.binary.wait_reasons.get(usize::from(reason)) {
            Some(name) if !name.is_empty() => name.clone(),
            _ => format!("wait reason {reason}"),
        }
    }
}

/// Goroutine waits grouped by (stack, wait reason, object), before naming.
pub type WaitGroups = HashMap<(Arc<[u64]>, u8, Option<String>), GroupedWaits>;

/// The waits of one group, and whether its stack's walk stopped early.
#[derive(Debug, Default)]
pub struct GroupedWaits {
    pub stats: WaitStats,
    pub truncated: bool,
}

/// The goroutines of one read (a snapshot, or those still parked at the end of a
/// recording) grouped by stack, wait reason and object, each aged from the runtime's
/// `waitsince` where known (a lower bound: a GC records it after the wait began).
pub fn from_goroutines(namer: &mut GoNamer<'_>, goroutines: Vec<Goroutine>) -> GoStacks {
    from_goroutines_at(namer, goroutines, crate::threads::blocked_now::monotonic_now_ns())
}

/// As `from_goroutines`, aged at `now_ns` (`CLOCK_MONOTONIC`, the clock of the runtime's
/// `nanotime()`): a recording's last read, so that naming's time adds to no age.
pub fn from_goroutines_at(
    namer: &mut GoNamer<'_>,
    goroutines: Vec<Goroutine>,
    now_ns: u64,
) -> GoStacks {
    let now = i64::try_from(now_ns).unwrap_or(i64::MAX);
    // Keyed by the stack's one shared copy (the reader interns them): no stack is hashed
    // per goroutine. Each group's waits are added at once (see `add_lower_bounds`).
    type Key = (*const u64, u8, Option<String>);
    /// The stack, whether its walk stopped early, and each goroutine's id and age.
    type Waits = (Arc<[u64]>, bool, Vec<(u64, Option<u64>)>);
    let mut waits: HashMap<Key, Waits> = HashMap::new();
    for Goroutine {
        goid,
        address: _,
        sp: _,
        tracking_seq: _,
        stack_lo: _,
        stack_hi: _,
        wait_reason,
        wait_since,
        pcs,
        truncated,
        waiting: _,
        gopc: _,
        parent_goid: _,
        object,
        blocked_on: _,
        selects_on: _,
        channel_at_place: _,
        bp: _,
        frameless: _,
    } in goroutines
    {
        let key = (pcs.as_ptr(), wait_reason, object);
        let (_, _, group) = waits.entry(key).or_insert_with(|| (pcs, truncated, Vec::new()));
        // Goroutine ids stand in for thread ids: they tell the goroutines apart.
        let age = (wait_since > 0 && now > wait_since).then(|| (now - wait_since) as u64);
        group.push((goid, age));
    }
    let mut groups = WaitGroups::new();
    for ((_, reason, object), (pcs, truncated, waits)) in waits {
        let group = groups
            .entry((pcs, reason, object))
            .or_insert_with(|| GroupedWaits { truncated, ..GroupedWaits::default() });
        group.stats.add_lower_bounds(waits);
    }
    from_groups(namer, groups, true)
}

/// Named stacks of grouped goroutine waits: in progress (still parked when read), or
/// ended (a sampled recording's). The runtime's own goroutines are left out and counted.
pub fn from_groups(namer: &mut GoNamer<'_>, groups: WaitGroups, in_progress: bool) -> GoStacks {
    let mut out = GoStacks::default();
    for ((pcs, reason, object), GroupedWaits { stats, truncated }) in groups {
        // Every pc of a parked goroutine is a return address.
        let mut frames: Vec<Frame> =
            pcs.iter().flat_map(|&pc| namer.frames(pc, 1).to_vec()).collect();
        frames.reverse(); // root first
        let waits = if in_progress { stats.threads.len() as u64 } else { stats.waits };
        if is_system(&frames, truncated) {
            out.runtime_hidden += waits;
            continue;
        }
        if truncated {
            out.truncated += waits;
        }
        let reason = namer.wait_reason(reason);
        out.stacks.push(goroutine_stack(frames, reason, object, truncated, in_progress, stats));
    }
    out
}

/// The kernel's sums of ended waits by (stack, caller, wait reason), grouped by named
/// stack and reason. The kernel keeps no goroutine ids or extremes: only counts and time.
pub fn from_kernel_totals(namer: &mut GoNamer<'_>, totals: Vec<GoWaitTotal>) -> GoStacks {
    // (function names, reason) → (frames, waits, truncated)
    type Group = (Vec<Frame>, WaitStats, bool);
    let mut groups: HashMap<(Vec<String>, u8), Group> = HashMap::new();
    for GoWaitTotal { pcs, caller, reason, count, total_ns } in totals {
        let mut frames = Vec::with_capacity(pcs.len() + 1);
        let mut truncated = true;
        // The leaf is gopark's entry itself; the rest are return addresses. gopark's own
        // return address (`caller`) is what a frame-pointer walk from its entry skips.
        for (index, &pc) in pcs.iter().enumerate() {
            let named = namer.frames(pc, if index == 0 { 0 } else { 1 }).to_vec();
            if named.iter().any(|frame| frame.name == "runtime.goexit") {
                truncated = false;
                break;
            }
            frames.extend(named);
            if index == 0 && caller != 0 {
                frames.extend(namer.frames(caller, 1).to_vec());
            }
        }
        if frames.is_empty() {
            frames.push(Frame::unknown_named(STACK_LOST, 0));
        }
        frames.reverse(); // root first
        let key = (frames.iter().map(|frame| frame.name.clone()).collect(), reason);
        let (_, stats, _) = groups.entry(key).or_insert((frames, WaitStats::default(), truncated));
        stats.waits += count;
        stats.total_ns += total_ns;
    }
    let mut out = GoStacks::default();
    for ((_, reason), (frames, stats, truncated)) in groups {
        if is_system(&frames, truncated) {
            out.runtime_hidden += stats.waits;
            continue;
        }
        // A stack the kernel could not store is counted lost there (go_stacks_lost).
        let lost = frames.first().is_some_and(|frame| frame.name == STACK_LOST);
        if truncated && !lost {
            out.truncated += stats.waits;
        }
        let reason = namer.wait_reason(reason);
        out.stacks.push(goroutine_stack(frames, reason, None, truncated, false, stats));
    }
    out
}

/// A stack the kernel could not store: the frame that stands for it.
const STACK_LOST: &str = "[stack lost]";

fn goroutine_stack(
    frames: Vec<Frame>,
    reason: String,
    endpoint: Option<String>,
    truncated: bool,
    in_progress: bool,
    stats: WaitStats,
) -> ProfileStack {
    let object = match endpoint {
        Some(endpoint) => format!("{reason} {endpoint}"),
        None => reason,
    };
    ProfileStack {
        frames,
        kind: WaitKind::Goroutine,
        object: Some(object),
        truncated,
        in_progress,
        stats,
        process: None,
    }
}

/// Started in package runtime (root first): one of the runtime's own goroutines.
fn is_system(frames: &[Frame], truncated: bool) -> bool {
    let root = frames
        .iter()
        .map(|frame| frame.name.as_str())
        .find(|name| *name != "runtime.goexit")
        .unwrap_or_default();
    !truncated && root.starts_with("runtime.") && !USER_RUNTIME_ROOTS.contains(&root)
}

/// The frames of the link-time address `link_pc` (found at the process address `pc`),
/// innermost inlined call first and the function the code was compiled into last; one
/// `[unknown 0x…]` frame if no function contains it.
fn frames_of(binary: &GoBinary<'_>, link_pc: u64, pc: u64, module: &str) -> Vec<Frame> {
    let frames: Vec<Frame> = binary
        .pclntab
        .frames(link_pc)
        .into_iter()
        .map(|GoLocation { function, entry: _, file, line, inlined }| Frame {
            name: function,
            module: module.to_owned(),
            module_is_main: true,
            file,
            line,
            inlined,
            address: pc,
        })
        .collect();
    if frames.is_empty() {
        let mut unknown = Frame::unknown_named(&format!("[unknown {pc:#x}]"), pc);
        unknown.module = module.to_owned();
        return vec![unknown];
    }
    frames
}
