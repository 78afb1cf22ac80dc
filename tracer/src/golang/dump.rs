//! One read of the goroutines kept goroutine by goroutine, for Go's own text formats
//! (`/debug/pprof/goroutine?debug=1` and `?debug=2` of `serve`): grouped as Go's goroutine
//! profile groups them, by return addresses and wait, not merged by function names as the
//! reports merge stacks; each group keeps its addresses with their functions' entries, and
//! its goroutines' full ids and ages.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::{
    goroutines::Goroutine,
    stacks::{GoNamer, GoStacks, from_goroutines},
};
use crate::model::{Profile, ProfileStack};

/// The goroutines of one read, group by group.
#[derive(Debug)]
pub struct GoroutineDump {
    /// What was read and about whom; its stacks are the groups' (same order: most
    /// goroutines first), of kind `Goroutine`, each goroutine one wait.
    pub profile: Profile,
    /// What Go's formats need beyond the common model, per stack of `profile`.
    pub groups: Vec<GoroutineGroup>,
}

/// One group of goroutines: the same return addresses, wait reason and object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoroutineGroup {
    /// The Go wait reason alone (`chan send`; the stack's object may add an endpoint).
    pub wait_reason: String,
    /// The return addresses, leaf first, as read (no `runtime.goexit`).
    pub pcs: Vec<GoPc>,
    /// Its goroutines, by id.
    pub goroutines: Vec<DumpedGoroutine>,
}

/// A return address and the entry of the function it returns into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoPc {
    pub pc: u64,
    /// `None` where no function of `.gopclntab` contains it.
    pub entry: Option<u64>,
}

/// One goroutine of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedGoroutine {
    /// The runtime's `goid`, in full (stacks keep its low 32 bits as a thread id).
    pub id: u64,
    /// How long it has waited, from the runtime's `waitsince`: set by a GC that found
    /// it waiting (so a lower bound), `None` before any did. Go's traceback prints its
    /// minutes from the same field.
    pub waiting: Option<Duration>,
    /// The `go` statement that created it, where one did and its function is known.
    pub created_by: Option<Arc<CreatedBy>>,
    /// The goroutine that created it (0 if not known: before Go 1.21).
    pub parent_id: u64,
}

/// Where a goroutine was created, as Go's traceback names it (`printcreatedby1`): the
/// function compiled around the `go` statement, the source line of the statement (an
/// inlined call's own), and the return address's offset in that function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedBy {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// `None` where the address is the function's entry.
    pub offset: Option<u64>,
}

impl GoroutineDump {
    /// The dump of `base` (a profile without stacks) with `stacks[i]` the stack of
    /// `groups[i]`, most goroutines first.
    pub(super) fn new(
        mut base: Profile,
        stacks: Vec<ProfileStack>,
        groups: Vec<GoroutineGroup>,
    ) -> Self {
        let mut paired: Vec<(ProfileStack, GoroutineGroup)> =
            stacks.into_iter().zip(groups).collect();
        // Go's order: by count, most first (then by addresses, where Go compares its keys).
        paired.sort_by(|(_, a), (_, b)| {
            b.goroutines
                .len()
                .cmp(&a.goroutines.len())
                .then_with(|| a.pcs.iter().map(|pc| pc.pc).cmp(b.pcs.iter().map(|pc| pc.pc)))
        });
        let (stacks, groups) = paired.into_iter().unzip();
        base.stacks = stacks;
        Self { profile: base, groups }
    }

    /// Each stack with its group.
    pub fn iter(&self) -> impl Iterator<Item = (&ProfileStack, &GoroutineGroup)> {
        self.profile.stacks.iter().zip(&self.groups)
    }

    /// The goroutines shown (the runtime's own are not).
    pub fn goroutines(&self) -> usize {
        self.groups.iter().map(|group| group.goroutines.len()).sum()
    }
}

/// Groups `goroutines` by return addresses, wait reason and object, each group named as
/// `from_goroutines` names it: the stacks, and the group of each stack (same order). The
/// runtime's own goroutines are left out and counted, as there.
pub(super) fn group(
    namer: &mut GoNamer<'_>,
    mut goroutines: Vec<Goroutine>,
) -> (GoStacks, Vec<GoroutineGroup>) {
    // CLOCK_MONOTONIC: the clock of the runtime's `nanotime()`.
    let now = i64::try_from(crate::threads::blocked_now::monotonic_now_ns()).unwrap_or(i64::MAX);
    fn key(g: &Goroutine) -> (&[u64], u8, Option<&str>, u64) {
        (&g.pcs[..], g.wait_reason, g.object.as_deref(), g.goid)
    }
    goroutines.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
    let wrapper = namer.wrapper_func_id();
    let mut entries: HashMap<u64, Option<u64>> = HashMap::new();
    let mut creators: HashMap<u64, Option<Arc<CreatedBy>>> = HashMap::new();
    let mut wrappers: HashMap<u64, bool> = HashMap::new();
    let mut out = GoStacks::default();
    let mut groups = Vec::new();
    let mut rest = goroutines.into_iter().peekable();
    while let Some(first) = rest.next() {
        let mut run = vec![first];
        while let Some(next) = rest.next_if(|g| {
            let first = &run[0];
            g.pcs[..] == first.pcs[..]
                && g.wait_reason == first.wait_reason
                && g.object == first.object
        }) {
            run.push(next);
        }
        let first = &run[0];
        let pcs: Vec<GoPc> = first
            .pcs
            .iter()
            .map(|&pc| GoPc { pc, entry: *entries.entry(pc).or_insert_with(|| namer.entry(pc)) })
            .collect();
        let wrapper_pcs: Vec<u64> = match wrapper {
            Some(wrapper) => first
                .pcs
                .iter()
                .copied()
                .filter(|&pc| *wrappers.entry(pc).or_insert_with(|| namer.is_wrapper(pc, wrapper)))
                .collect(),
            None => Vec::new(),
        };
        let mut group = GoroutineGroup {
            wait_reason: namer.wait_reason(first.wait_reason),
            pcs,
            goroutines: run
                .iter()
                .map(|g| DumpedGoroutine {
                    id: g.goid,
                    waiting: (g.wait_since > 0 && now > g.wait_since)
                        .then(|| Duration::from_nanos((now - g.wait_since) as u64)),
                    created_by: creators
                        .entry(g.gopc)
                        .or_insert_with(|| created_by(namer, g.gopc))
                        .clone(),
                    parent_id: g.parent_goid,
                })
                .collect(),
        };
        // One run is one group: at most one stack, none if the runtime's own.
        let named = from_goroutines(namer, run);
        out.runtime_hidden += named.runtime_hidden;
        out.truncated += named.truncated;
        if let Some(mut stack) = named.stacks.into_iter().next() {
            elide_wrappers(&mut stack, &mut group, &wrapper_pcs);
            out.stacks.push(stack);
            groups.push(group);
        }
    }
    (out, groups)
}

/// The function and line of the `go` statement whose return address is `gopc` (None for
/// 0, or an address in no function).
fn created_by(namer: &mut GoNamer<'_>, gopc: u64) -> Option<Arc<CreatedBy>> {
    if gopc == 0 {
        return None;
    }
    let entry = namer.entry(gopc)?;
    // Innermost inlined call first: its line is the statement's; the last frame is the
    // function the code was compiled into, whose name Go prints.
    let frames = namer.frames_at_return(gopc);
    let (innermost, compiled_into) = (frames.first()?, frames.last()?);
    Some(Arc::new(CreatedBy {
        function: compiled_into.name.clone(),
        file: innermost.file.clone(),
        line: innermost.line,
        offset: (gopc > entry).then(|| gopc - entry),
    }))
}

/// Leaves out the frames of the compiler's wrappers (at `wrapper_pcs`), as Go's
/// tracebacks and goroutine profile do (`elideWrapperCalling`): all but one that called a
/// panic rather than what it wraps. An address left without frames leaves the `@` line.
fn elide_wrappers(stack: &mut ProfileStack, group: &mut GoroutineGroup, wrapper_pcs: &[u64]) {
    if wrapper_pcs.is_empty() {
        return;
    }
    const PANICS: [&str; 3] = ["runtime.gopanic", "runtime.sigpanic", "runtime.panicwrap"];
    let frames = std::mem::take(&mut stack.frames);
    // Root first: a frame's callee is the next one.
    let keep: Vec<bool> = (0..frames.len())
        .map(|index| {
            let frame = &frames[index];
            let callee = frames.get(index + 1).map(|callee| callee.name.as_str());
            frame.inlined
                || !wrapper_pcs.contains(&frame.address)
                || callee.is_some_and(|callee| PANICS.contains(&callee))
        })
        .collect();
    stack.frames =
        frames.into_iter().zip(keep).filter_map(|(frame, keep)| keep.then_some(frame)).collect();
    group.pcs.retain(|pc| stack.frames.iter().any(|frame| frame.address == pc.pc));
}

#[cfg(test)]
mod tests {
    use tracer_common::WaitKind;

    use super::*;
    use crate::{model::WaitStats, stacks::Frame};

    fn frame(name: &str, address: u64) -> Frame {
        let mut frame = Frame::unknown_named(name, address);
        frame.module_is_main = true;
        frame
    }

    fn stack(frames: Vec<Frame>) -> (ProfileStack, GoroutineGroup) {
        let mut pcs: Vec<GoPc> =
            frames.iter().map(|frame| GoPc { pc: frame.address, entry: Some(0) }).collect();
        pcs.reverse();
        let stack = ProfileStack {
            frames,
            kind: WaitKind::Goroutine,
            object: Some("chan send".into()),
            truncated: false,
            in_progress: true,
            stats: WaitStats::default(),
            process: None,
        };
        let group = GoroutineGroup { wait_reason: "chan send".into(), pcs, goroutines: Vec::new() };
        (stack, group)
    }

    fn names(stack: &ProfileStack) -> Vec<&str> {
        stack.frames.iter().map(|frame| frame.name.as_str()).collect()
    }

    #[test]
    fn wrappers_are_left_out_unless_they_called_a_panic() {
        // A `go sendStat(…)` statement's wrapper at the root (root first).
        let (mut senders, mut group) = stack(vec![
            frame("main.pileup.gowrap1", 0x10),
            frame("main.sendStat", 0x20),
            frame("runtime.gopark", 0x30),
        ]);
        elide_wrappers(&mut senders, &mut group, &[0x10]);
        assert_eq!(names(&senders), ["main.sendStat", "runtime.gopark"]);
        assert_eq!(group.pcs.iter().map(|pc| pc.pc).collect::<Vec<_>>(), [0x30, 0x20]);

        let (mut panicking, mut group) =
            stack(vec![frame("main.T.M-fm", 0x10), frame("runtime.gopanic", 0x40)]);
        elide_wrappers(&mut panicking, &mut group, &[0x10]);
        assert_eq!(names(&panicking), ["main.T.M-fm", "runtime.gopanic"]);
    }

    #[test]
    fn groups_come_most_goroutines_first() {
        let goroutines = |n: u64| {
            let goroutine =
                |id| DumpedGoroutine { id, waiting: None, created_by: None, parent_id: 0 };
            (0..n).map(goroutine).collect()
        };
        let (one, mut few) = stack(vec![frame("main.a", 0x10)]);
        let (two, mut many) = stack(vec![frame("main.b", 0x20)]);
        few.goroutines = goroutines(1);
        many.goroutines = goroutines(3);
        let base = Profile::new(crate::model::ProfileKind::Snapshot, 1, "g".into());
        let dump = GoroutineDump::new(base, vec![one, two], vec![few, many]);
        let order: Vec<(&str, usize)> = dump
            .iter()
            .map(|(stack, group)| (stack.frames[0].name.as_str(), group.goroutines.len()))
            .collect();
        assert_eq!(order, [("main.b", 3), ("main.a", 1)]);
        assert_eq!(dump.goroutines(), 4);
    }
}
