//! Go programs: goroutines, seen from outside. A Go program's goroutines park in the Go
//! scheduler, not in the kernel, so its threads' waits say nothing about them; this module
//! reads the runtime's own goroutine list instead.
//!
//! Stages: `binary` (is it Go; version, `runtime.g` and `runtime.pollDesc` layouts,
//! `runtime.allgs`, wait-reason names) → `goroutines` (read the list and unwind each
//! waiting goroutine from /proc/PID's memory, without stopping the process) → `netpoll`
//! (the socket each goroutine in IO wait waits on) → `pclntab` (names, files, lines from
//! `.gopclntab`, which stripped binaries keep) → `stacks` (the common model's stacks, one per
//! group of goroutines, with the Go call-site rule). Everything after the model is shared
//! with threads: the same summary, the same exporters.

mod binary;
mod channels;
mod dump;
mod goroutines;
mod holders;
mod netpoll;
mod pclntab;
mod record;
mod sampler;
mod semaphores;
mod stack_maps;
mod stacks;
mod syscalls;

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use anyhow::Context as _;

use crate::{
    chains,
    model::{Profile, ProfileKind, ThreadCounts, module_infos},
    objects::WaitObjects,
    pipeline::{self, Traced, target::Target},
    stacks::ProcessImage,
};

pub use binary::is_go;
pub use binary::{
    EpollData, GLayout, LayoutSources, NEWEST_KNOWN_GO, OLDEST_KNOWN_GO, PollDescLayout,
    RuntimeLayout, layout_sources,
};
pub use dump::{CreatedBy, DumpedGoroutine, GoPc, GoroutineDump, GoroutineGroup};
pub use record::{GoRecording, record, sample_window};
pub use sampler::DEFAULT_RATE_HZ;

/// Snapshots the goroutines of the Go process `traced` and prints/writes the reports.
pub fn snapshot(traced: &Traced, outputs: &[PathBuf], top: usize) -> anyhow::Result<()> {
    let outputs = pipeline::create_outputs(outputs)?;
    let profile = snapshot_of(traced, true)?;
    pipeline::report(&profile, outputs, top)
}

/// One read of the goroutines of the Go process `traced`, as a snapshot profile (what
/// `snapshot` reports).
pub fn snapshot_profile(traced: &Traced) -> anyhow::Result<Profile> {
    snapshot_of(traced, false)
}

/// The profile has the wait chains a snapshot of goroutines can have: from a channel's
/// blocked goroutines to those holding it (`holders`), on to the endpoint and the process
/// behind it.
fn snapshot_of(traced: &Traced, announce: bool) -> anyhow::Result<Profile> {
    let pid = traced.target.pid;
    let mut sockets = Default::default();
    let (base, named, holders) = read_snapshot(traced, announce, |namer, goroutines, objects| {
        let holders = holders::goroutine_holders(pid, &goroutines, &mut namer.stack_maps());
        sockets = std::mem::take(&mut objects.endpoint_sockets);
        (stacks::from_goroutines(namer, goroutines), holders)
    })?;
    let mut profile = Profile::from_symbolized(base, named.stacks);
    let facts = chains::live::gather_goroutines(&profile, &sockets, holders);
    chains::add_to(&mut profile, &facts);
    // A Go peer's threads are the runtime's; a C or Rust peer's frames that need a
    // saved rbp end their walk.
    crate::pipeline::add_backed_up_sockets(
        &mut profile,
        &crate::threads::blocked_now::SavedFramePointers::default(),
    );
    Ok(profile)
}

/// One read of the goroutines of the Go process `traced`, kept goroutine by goroutine in
/// groups of the same return addresses (what `serve` answers /debug/pprof/goroutine with,
/// in Go's own formats).
pub fn goroutine_dump(traced: &Traced) -> anyhow::Result<GoroutineDump> {
    let (base, named, groups) =
        read_snapshot(traced, false, |namer, goroutines, _| dump::group(namer, goroutines))?;
    Ok(GoroutineDump::new(base, named.stacks, groups))
}

/// One read of the goroutines of `traced`, grouped into stacks by `group` (which also sees
/// the objects their waits were named from): the profile without its stacks, the stacks,
/// and what else `group` made. `announce` says on stderr that the read begins, once the
/// binary has been read (one that cannot be read, such as a Go newer than the layout table
/// without DWARF, is then the one line on stderr).
fn read_snapshot<T>(
    traced: &Traced,
    announce: bool,
    group: impl FnOnce(
        &mut stacks::GoNamer<'_>,
        Vec<goroutines::Goroutine>,
        &mut WaitObjects,
    ) -> (stacks::GoStacks, T),
) -> anyhow::Result<(Profile, stacks::GoStacks, T)> {
    let Traced { target, image } = traced;
    let pid = target.pid;
    let started = Instant::now();
    let started_at = SystemTime::now();
    let (module, binary) = parse_main(image)?;
    let parsed = started.elapsed();
    if announce {
        crate::report::note(&format!(
            "tracer: reading the goroutines of {} (pid {pid})",
            target.comm
        ));
    }
    let (mut goroutines, mut counts) =
        read_waiting(target, &mut reader(&binary, pid, module.bias, false))?;
    let mut waits = WaitNamer::new(pid, &binary, image);
    waits.name(&mut goroutines, &mut counts);
    let read = started.elapsed();
    let mut namer = stacks::GoNamer::new(&binary, module.bias, module.name());
    let (named, grouped) = group(&mut namer, goroutines, &mut waits.objects);
    let elapsed = started.elapsed();
    log::info!(
        "goroutine snapshot of pid {pid} ({}): binary {parsed:?}, memory {:?}, grouping {:?}, total {elapsed:?}",
        binary.version,
        read - parsed,
        elapsed - read
    );
    let mut base = pipeline::profile_of(target, ProfileKind::Snapshot, started_at);
    base.duration = elapsed;
    base.thread_counts = thread_counts(&counts, named.runtime_hidden);
    base.counts.unwind_truncated = named.truncated;
    base.counts.unresolved_descriptors = counts.io_wait_unresolved;
    base.counts.non_socket_io = counts.io_wait_not_socket;
    base.counts.go_objects_unnamed = counts.objects_unnamed;
    base.endpoint_states = std::mem::take(&mut waits.objects.endpoint_states);
    base.modules = module_infos(image);
    Ok((base, named, grouped))
}

/// The main executable of `image` and its Go runtime's tables.
fn parse_main(
    image: &ProcessImage,
) -> anyhow::Result<(&crate::stacks::Module, binary::GoBinary<'_>)> {
    let module = image.main_module().context("no main executable mapping")?;
    let binary = binary::GoBinary::parse(module.file_bytes())
        .with_context(|| format!("{}: cannot read the Go runtime's tables", module.name()))?;
    log::info!(
        "{}: {}, runtime.g layout from {:?}, allgs at {:#x}, {} wait reasons, {}",
        module.name(),
        binary.version,
        binary.layout_source,
        binary.allgs,
        binary.wait_reasons.len(),
        if binary.stripped { "stripped" } else { "with symbols" }
    );
    Ok((module, binary))
}

/// A profile's "threads", which for a Go program are its goroutines; `runtime_hidden`
/// of them are the runtime's own, not shown.
fn thread_counts(counts: &goroutines::GoroutineCounts, runtime_hidden: u64) -> ThreadCounts {
    let goroutines::GoroutineCounts {
        total,
        waiting,
        running,
        runnable,
        in_syscall,
        changed_while_read,
        read_at_last_place: _,
        unreadable,
        left_out: _,
        io_wait_named: _,
        io_wait_unresolved: _,
        io_wait_not_socket: _,
        objects_unnamed: _,
    } = counts;
    ThreadCounts {
        threads: *total,
        // A goroutine in a system call is reported as it is (`syscall write on …`).
        blocked_in_waits: waiting + in_syscall,
        elsewhere: running + runnable,
        woke_while_read: *changed_while_read,
        unreadable: *unreadable,
        runtime_hidden,
        ..ThreadCounts::default()
    }
}

/// A reader of the goroutines of `target`, whose executable `binary` is mapped at `bias`;
/// `remember` for a reader that reads again (see [`goroutines::GoroutineReader`]).
fn reader<'a>(
    binary: &'a binary::GoBinary<'a>,
    pid: u32,
    bias: u64,
    remember: bool,
) -> goroutines::GoroutineReader<'a> {
    let addresses = goroutines::RuntimeAddresses {
        allgs: binary.allgs.wrapping_add(bias),
        goexit: binary.goexit.start.wrapping_add(bias)..binary.goexit.end.wrapping_add(bias),
    };
    let waiting = binary.channels.map(|channels| channels.g_waiting);
    let frame_sizes = goroutines::FrameSizes { pclntab: &binary.pclntab, bias };
    goroutines::GoroutineReader::new(pid, binary.layout, waiting, addresses, frame_sizes, remember)
}

/// One read of `reader`: the waiting goroutines of `target`, and every one counted. A
/// failure is more often than not the target exiting: said so.
fn read_waiting(
    target: &Target,
    reader: &mut goroutines::GoroutineReader<'_>,
) -> anyhow::Result<(Vec<goroutines::Goroutine>, goroutines::GoroutineCounts)> {
    let pid = target.pid;
    reader.read().map_err(|err| {
        if target.has_exited() {
            anyhow::anyhow!("pid {pid} exited while its goroutines were read")
        } else {
            anyhow::Error::new(err).context(format!("cannot read the goroutines of pid {pid}"))
        }
    })
}

/// Names what the goroutines of a read wait on, where it can: the socket of an IO wait,
/// the channel of a channel operation, the lock of a sync wait; what cannot be named is
/// counted. Keeps each endpoint's state and each file's data symbols across reads.
pub(crate) struct WaitNamer<'a> {
    pid: u32,
    binary: &'a binary::GoBinary<'a>,
    image: &'a ProcessImage,
    bias: u64,
    pub objects: WaitObjects,
    locks: crate::objects::locks::LockNamer,
    epolls: netpoll::EpollDescriptors,
    named: netpoll::NamedRegistrations,
}

impl<'a> WaitNamer<'a> {
    pub fn new(pid: u32, binary: &'a binary::GoBinary<'a>, image: &'a ProcessImage) -> Self {
        let bias = image.main_module().map_or(0, |module| module.bias);
        Self {
            pid,
            binary,
            image,
            bias,
            objects: WaitObjects::new(pid),
            locks: crate::objects::locks::LockNamer::new(),
            epolls: netpoll::EpollDescriptors::default(),
            named: netpoll::NamedRegistrations::new(),
        }
    }

    pub fn name(
        &mut self,
        goroutines: &mut [goroutines::Goroutine],
        counts: &mut goroutines::GoroutineCounts,
    ) {
        let Self { pid, binary, image, bias, objects, locks, epolls, named } = self;
        name_io_waits(*pid, binary, goroutines, counts, objects, epolls, named);
        channels::name_channel_waits(*pid, binary, *bias, goroutines, counts);
        semaphores::name_semaphore_waits(*pid, binary, *bias, image, locks, goroutines, counts);
        syscalls::name_syscall_waits(*pid, goroutines, counts, objects);
    }
}

/// Names the socket each goroutine parked on a descriptor waits on, through `objects`
/// (which keeps each endpoint's state); what cannot be named is counted.
fn name_io_waits(
    pid: u32,
    binary: &binary::GoBinary<'_>,
    goroutines: &mut [goroutines::Goroutine],
    counts: &mut goroutines::GoroutineCounts,
    objects: &mut WaitObjects,
    epolls: &mut netpoll::EpollDescriptors,
    named: &mut netpoll::NamedRegistrations,
) {
    let io_wait = binary
        .wait_reasons
        .iter()
        .position(|reason| reason == crate::model::GO_IO_WAIT)
        .and_then(|index| u8::try_from(index).ok());
    if !goroutines.iter().any(|goroutine| Some(goroutine.wait_reason) == io_wait) {
        return;
    }
    let parked = match &binary.poll_desc {
        Some(layout) => netpoll::parked_on_descriptors(pid, layout, &binary.epoll_data, epolls)
            .unwrap_or_else(|err| {
                log::warn!("cannot read the netpoller's descriptors of pid {pid}: {err}");
                Default::default()
            }),
        None => {
            log::warn!(
                "{}: runtime.pollDesc's layout is unknown; IO waits are not named",
                binary.version
            );
            Default::default()
        }
    };
    netpoll::name_io_waits(goroutines, &parked, io_wait, objects, counts, named);
    objects.log_socket_lookups();
}
