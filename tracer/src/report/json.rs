//! The JSON report: tracer's own versioned schema (`docs/json-schema.md`), the format
//! `tracer report` reads back.
//!
//! The schema is a set of mirror structs converted from and to `Profile`, so that the
//! internal model can change while the files stay readable: a field added here keeps
//! the schema (readers ignore fields they do not know); a field renamed, removed or
//! changed in meaning makes a new one. `tracer-profile/2` added the wait chains, whose
//! peers and lock holders only the live system could tell; `/1` files are still read,
//! their chains joined from their stacks and wakers.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tracer_common::{ShortWaitTotals, WaitKind};

use crate::{
    chains::{self, ChainFacts},
    model::{
        BackedUp, BackedUpSocket, Backlog, ModuleInfo, ProcessTag, Profile, ProfileKind,
        ProfileStack, PythonInfo, Sampling, ThreadCounts, Timeline, TraceCounts, WaitStats,
        WakerRow, timeline::SiteSeconds,
    },
    report::{
        Provenance, SavedProfile,
        json_chains::{JsonChain, json_chains, wait_chains},
    },
    stacks::Frame,
};

/// The value of the `schema` field of every file this version writes.
pub const SCHEMA: &str = "tracer-profile/2";
/// The schema before wait chains: still read (their chains are joined from the file's
/// stacks and wakers, without the facts read from the live system).
pub const SCHEMA_WITHOUT_CHAINS: &str = "tracer-profile/1";

/// The whole file.
#[derive(Debug, Serialize, Deserialize)]
pub struct JsonProfile {
    pub schema: String,
    pub tracer_version: String,
    /// `"recording"` or `"snapshot"`.
    pub kind: String,
    pub target: JsonTarget,
    /// The kernel release (`uname -r`), when known.
    pub kernel: Option<String>,
    /// When the recording (or snapshot) started, nanoseconds since the Unix epoch.
    pub start_unix_ns: Option<u64>,
    pub duration_ns: u64,
    /// Waits at least this long carry a stack (0 in a snapshot).
    pub min_wait_ns: u64,
    /// A sampled recording: the process was read every `sample_period_ns`,
    /// `sample_reads` times (absent: exact, every wait seen as it happened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_period_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_reads: Option<u64>,
    /// An exact recording without the wake probe: no wakers were looked for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_wakers: bool,
    /// Heaviest first.
    pub stacks: Vec<JsonStack>,
    /// Waits under the threshold, per kind (no stacks).
    pub below_threshold: Vec<JsonShortWaits>,
    pub counts: JsonTraceCounts,
    pub thread_counts: JsonThreadCounts,
    /// Why each endpoint's waits wait, as last seen.
    pub endpoint_states: BTreeMap<String, String>,
    /// Thread names by thread id (object keys are decimal thread ids).
    pub thread_names: BTreeMap<u32, String>,
    /// Who woke the long futex waits, most wakes first.
    #[serde(default)]
    pub wakers: Vec<JsonWaker>,
    /// The target's executables and libraries by file name (the frames' `module`).
    #[serde(default)]
    pub modules: BTreeMap<String, JsonModule>,
    /// From the sites where threads pile up to what holds them up, heaviest first
    /// (absent before `tracer-profile/2`).
    #[serde(default)]
    pub chains: Vec<JsonChain>,
    /// A profile of several processes: each of them (then `target.pid` is 0, and each
    /// stack names its `process`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<JsonProcess>,
    /// A recording's waits second by second, per call site (absent in a snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<JsonTimeline>,
    /// A CPython process: its version and what Python frames could not be had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<JsonPython>,
    /// Sockets whose data stopped moving as the report was made, most bytes queued first
    /// (added in tracer 0.1.0; absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backed_up_sockets: Vec<JsonBackedUpSocket>,
    /// Backed-up sockets past the ones listed per process (absent when none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backed_up_sockets_left_out: u64,
}

/// A socket whose data stopped moving: written but not sent (`unsent`), or received but
/// not read (`unread`).
#[derive(Debug, Serialize, Deserialize)]
pub struct JsonBackedUpSocket {
    /// `unsent` or `unread`.
    pub backlog: String,
    pub fd: u64,
    /// The socket's inode (`socket:[INODE]`).
    #[serde(default)]
    pub inode: u64,
    /// The other end, as `endpoint_states` names it.
    pub peer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    pub queued_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_bytes: Option<u64>,
    /// The receiving end advertises a zero window (the peer's for `unsent`, this end's for
    /// `unread`).
    pub window_closed: bool,
    /// Unsent TCP data being retransmitted, unacknowledged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retransmitting: bool,
    /// Unsent TCP data still moving, held back by the peer's window this percent of the
    /// time between two looks (a slow reader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_limited_percent: Option<u8>,
    /// A TCP connection (else a Unix socket).
    #[serde(default)]
    pub tcp: bool,
    /// The process at the other end, on this host, and what it does now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_process: Option<String>,
    /// Since data last moved that way (TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ns: Option<u64>,
    /// In a profile of several processes: whose socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<JsonProcess>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonPython {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    #[serde(default)]
    pub unreadable_frames: u64,
    #[serde(default)]
    pub truncated_stacks: u64,
}

/// Second by second from the recording's start, per call site: threads blocked at the end
/// of each second and the time blocked within it. The waits themselves are in the
/// `.trace.json` the recording wrote.
#[derive(Debug, Serialize, Deserialize)]
pub struct JsonTimeline {
    /// Wall time of second 0, nanoseconds since the Unix epoch.
    pub origin_unix_ns: Option<u64>,
    /// Waits not kept as spans for the `.trace.json` (past its cap); the seconds count them.
    pub spans_dropped: u64,
    /// Heaviest site first.
    pub sites: Vec<JsonSiteSeconds>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonSiteSeconds {
    pub site: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<JsonProcess>,
    /// Threads blocked at the end of each second.
    pub threads: Vec<u32>,
    /// Nanoseconds blocked within each second.
    pub blocked_ns: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JsonModule {
    /// The path as the target saw it.
    pub path: String,
    /// The GNU build id, hex.
    pub build_id: Option<String>,
    /// The executable address range it was mapped at.
    pub start: u64,
    pub end: u64,
    /// The file offset mapped at `start`.
    #[serde(default)]
    pub file_offset: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonWaker {
    /// The call site of the waits that were woken.
    pub waiting_site: String,
    pub kind: String,
    /// The call site of the waking thread.
    pub waker_site: String,
    /// The waker's stack, root first.
    pub waker_frames: Vec<JsonFrame>,
    pub wakes: u64,
    pub waker_threads: Vec<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonTarget {
    pub pid: u32,
    pub comm: String,
    /// argv, when it could be read.
    pub command_line: Option<Vec<String>>,
    /// The target exited before the recording's end.
    pub exited: bool,
    /// Its cgroup v2 path, where one was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The container id in the cgroup's name, where there is one (written, not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonStack {
    /// `futex`, `send`, `recv`, `connect`, `accept`, `poll`, `read` or `write`.
    pub kind: String,
    /// What the wait waits on (an endpoint, a lock), when known.
    pub object: Option<String>,
    /// A wait still in progress at the end of the recording (every stack of a snapshot).
    pub still_blocked: bool,
    /// The unwinding stopped before the root.
    pub truncated: bool,
    /// Root first, leaf last.
    pub frames: Vec<JsonFrame>,
    pub waits: u64,
    pub total_ns: u64,
    /// Shortest wait (of waits in progress: the youngest).
    pub min_ns: u64,
    /// Longest wait (of waits in progress: the oldest).
    pub max_ns: u64,
    /// Some durations are lower bounds (waits that began before tracing).
    pub lower_bound: bool,
    /// The ids of the threads that waited here (of the goroutines, for Go stacks).
    pub threads: Vec<u64>,
    /// Waits by duration: key `k` counts the waits of [2^k, 2^(k+1)) nanoseconds (of
    /// waits in progress: their ages).
    #[serde(default)]
    pub log2_histogram: BTreeMap<u32, u64>,
    /// In a profile of several processes: the process these waits are of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<JsonProcess>,
}

/// A process of a profile of several.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonProcess {
    pub pid: u32,
    pub comm: String,
    /// Its cgroup v2 path, where one was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The container id in the cgroup's name, where there is one (written, not read:
    /// it follows from `cgroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// In the profile's list of processes: its own executables and libraries, where
    /// each is mapped in it (`modules` joins them, without a range where they differ).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub modules: BTreeMap<String, JsonModule>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonFrame {
    pub name: String,
    /// The module's file name.
    pub module: String,
    /// The module is the target's main executable.
    pub main_module: bool,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Inlined into the frame before it (its caller) at the same address.
    pub inlined: bool,
    pub address: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonShortWaits {
    pub kind: String,
    pub waits: u64,
    pub total_ns: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonTraceCounts {
    /// Files written before these counters existed (they had `calls_entered` and
    /// `returned_without_waiting`) read as 0.
    #[serde(default)]
    pub waits_started: u64,
    #[serde(default)]
    pub waits_discarded: u64,
    pub short_waits: u64,
    pub long_waits: u64,
    pub ring_buffer_full: u64,
    pub stack_unreadable: u64,
    pub stack_shortened: u64,
    /// Long waits whose stack was copied in part (added in tracer 0.1.0; 0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stack_partial: u64,
    /// Short waits' copies walked to size later ones, and such copies not sent (added in
    /// tracer 0.1.0; 0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub span_samples: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub span_samples_dropped: u64,
    /// Sleeps whose stack was copied whole (added in tracer 0.1.0; 0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sleep_copies_whole: u64,
    /// Sleeps that kept a copy of their stack (added in tracer 0.1.0; 0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sleep_copies: u64,
    /// Long waits' stacks copied from outside while they slept (added in tracer 0.1.0;
    /// 0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub late_copies: u64,
    pub in_flight_map_full: u64,
    /// Wakes of long futex waits seen with the waker's stack (added in tracer 0.1.0;
    /// 0 when absent).
    #[serde(default)]
    pub wakes_seen: u64,
    #[serde(default)]
    pub wake_ring_buffer_full: u64,
    pub unwind_truncated: u64,
    pub unknown_symbols: u64,
    pub non_socket_io: u64,
    pub unresolved_descriptors: u64,
    /// Endpoints whose local peer could not be looked for (added in tracer 0.1.0;
    /// written only when not zero, 0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub peer_lookups_failed: u64,
    /// Processes whose sockets could not be read for backed-up queues (added in tracer
    /// 0.1.0; written only when not zero, 0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub socket_scans_failed: u64,
    /// Ended waits lost before their stacks were named (added in tracer 0.1.0; written
    /// only when not zero, 0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waits_unnamed: u64,
    pub malformed_records: u64,
    /// Sampled reads lost (added in tracer 0.1.0; 0 when absent).
    #[serde(default)]
    pub reads_lost: u64,
    /// A sampled recording's failed reads of a thread (added in tracer 0.1.0; written
    /// only when not zero, 0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub thread_reads_failed: u64,
    /// A sampled recording's new waits whose stack could not be read in time, lost
    /// (added in tracer 0.1.0; written only when not zero, 0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waits_unread: u64,
    /// Such waits counted at their thread's last stack at the same place (likewise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waits_at_last_place: u64,
    #[serde(default)]
    pub wakers_unmatched: u64,
    /// Go's losses and hidden runtime waits: written only when not zero, so thread
    /// profiles read as before.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub go_parks_lost: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub go_stacks_lost: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub go_waits_lost: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub go_goroutines_skipped: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub go_objects_unnamed: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub go_runtime_waits_hidden: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waits_begun_before: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonThreadCounts {
    pub threads: u64,
    pub blocked_in_waits: u64,
    pub elsewhere: u64,
    pub exited_while_read: u64,
    pub woke_while_read: u64,
    pub unreadable: u64,
    pub frame_pointer_unknown: u64,
    /// Goroutines of the Go runtime's own, not shown (written only when not zero).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub runtime_hidden: u64,
}

/// Why a file is not a profile `tracer report` can read.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not JSON at all, or cut short.
    #[error("not valid JSON")]
    Syntax(#[source] serde_json::Error),
    /// JSON, but no `schema` field naming a tracer profile.
    #[error("not a tracer profile (no \"schema\": \"{SCHEMA}\")")]
    Foreign,
    /// A tracer profile of a schema this version does not read.
    #[error(
        "schema {0:?} is not one this tracer reads (it reads {SCHEMA_WITHOUT_CHAINS:?} and {SCHEMA:?})"
    )]
    UnknownSchema(String),
    /// The schema's fields are missing or of the wrong type.
    #[error("not a valid {0} profile")]
    Shape(String, #[source] serde_json::Error),
    /// A value no recording can have.
    #[error("{0}")]
    Invalid(String),
}

pub fn write_json(
    profile: &Profile,
    provenance: &Provenance,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &to_json(profile, provenance))?;
    writeln!(out)?;
    Ok(())
}

pub fn to_json(profile: &Profile, provenance: &Provenance) -> JsonProfile {
    let Profile {
        kind,
        pid,
        start_unix_ns,
        command_line: profile_command_line,
        comm,
        cgroup,
        duration,
        min_wait,
        sampling,
        no_wakers,
        target_exited,
        stacks,
        below_threshold,
        counts,
        thread_counts,
        endpoint_states,
        thread_names,
        wakers,
        modules,
        process_modules,
        lock_addresses: _,
        chains,
        processes,
        timeline,
        python,
        backed_up,
    } = profile;
    let Provenance { tracer_version, kernel, command_line } = provenance;
    JsonProfile {
        schema: SCHEMA.to_string(),
        tracer_version: tracer_version.clone(),
        kind: kind_name(*kind).to_string(),
        target: JsonTarget {
            pid: *pid,
            comm: comm.clone(),
            // Read when tracing began, else (an older profile) when the report was written.
            command_line: profile_command_line.clone().or_else(|| command_line.clone()),
            exited: *target_exited,
            cgroup: cgroup.clone(),
            container: cgroup.as_deref().and_then(crate::model::container_id).map(str::to_string),
        },
        kernel: kernel.clone(),
        start_unix_ns: *start_unix_ns,
        duration_ns: duration.as_nanos() as u64,
        min_wait_ns: min_wait.as_nanos() as u64,
        sample_period_ns: sampling.map(|sampling| sampling.period.as_nanos() as u64),
        sample_reads: sampling.map(|sampling| sampling.reads),
        no_wakers: *no_wakers,
        stacks: stacks.iter().map(json_stack).collect(),
        below_threshold: below_threshold
            .iter()
            .map(|(kind, totals)| JsonShortWaits {
                kind: kind.name().to_string(),
                waits: totals.count,
                total_ns: totals.total_ns,
            })
            .collect(),
        counts: json_trace_counts(counts),
        thread_counts: json_thread_counts(thread_counts),
        endpoint_states: endpoint_states.clone(),
        thread_names: thread_names.clone(),
        wakers: wakers.iter().map(json_waker).collect(),
        chains: json_chains(chains),
        processes: processes
            .iter()
            .map(|process| JsonProcess {
                modules: process_modules.get(&process.pid).map(json_modules).unwrap_or_default(),
                ..json_process(process)
            })
            .collect(),
        timeline: timeline.as_ref().map(json_timeline),
        python: python.as_ref().map(
            |PythonInfo { version, missing, unreadable_frames, truncated_stacks }| JsonPython {
                version: version.clone(),
                missing: missing.clone(),
                unreadable_frames: *unreadable_frames,
                truncated_stacks: *truncated_stacks,
            },
        ),
        modules: json_modules(modules),
        backed_up_sockets: backed_up.sockets.iter().map(json_backed_up).collect(),
        backed_up_sockets_left_out: backed_up.left_out,
    }
}

fn json_backed_up(socket: &BackedUpSocket) -> JsonBackedUpSocket {
    let BackedUpSocket {
        process,
        fd,
        inode,
        peer,
        local,
        backlog,
        queued_bytes,
        buffer_bytes,
        window_closed,
        retransmitting,
        window_limited_percent,
        idle,
        tcp,
        peer_process,
    } = socket;
    JsonBackedUpSocket {
        backlog: backlog.name().to_string(),
        fd: *fd,
        inode: *inode,
        peer: peer.clone(),
        local: local.clone(),
        queued_bytes: *queued_bytes,
        buffer_bytes: *buffer_bytes,
        window_closed: *window_closed,
        retransmitting: *retransmitting,
        window_limited_percent: *window_limited_percent,
        tcp: *tcp,
        peer_process: peer_process.clone(),
        idle_ns: idle.map(|idle| idle.as_nanos() as u64),
        process: process.as_ref().map(json_process),
    }
}

fn backed_up_socket(json: JsonBackedUpSocket) -> Result<BackedUpSocket, String> {
    let JsonBackedUpSocket {
        backlog,
        fd,
        inode,
        peer,
        local,
        queued_bytes,
        buffer_bytes,
        window_closed,
        retransmitting,
        window_limited_percent,
        tcp,
        peer_process,
        idle_ns,
        process,
    } = json;
    Ok(BackedUpSocket {
        process: process.map(process_tag),
        fd,
        inode,
        peer,
        local,
        backlog: Backlog::from_name(&backlog)
            .ok_or_else(|| format!("unknown backlog {backlog:?}"))?,
        queued_bytes,
        buffer_bytes,
        window_closed,
        retransmitting,
        window_limited_percent,
        idle: idle_ns.map(Duration::from_nanos),
        tcp,
        peer_process,
    })
}

fn json_modules(modules: &BTreeMap<String, ModuleInfo>) -> BTreeMap<String, JsonModule> {
    modules
        .iter()
        .map(|(name, info)| {
            let ModuleInfo { path, build_id, start, end, file_offset } = info;
            let module = JsonModule {
                path: path.clone(),
                build_id: build_id.clone(),
                start: *start,
                end: *end,
                file_offset: *file_offset,
            };
            (name.clone(), module)
        })
        .collect()
}

fn module_infos(modules: BTreeMap<String, JsonModule>) -> BTreeMap<String, ModuleInfo> {
    modules
        .into_iter()
        .map(|(name, module)| {
            let JsonModule { path, build_id, start, end, file_offset } = module;
            (name, ModuleInfo { path, build_id, start, end, file_offset })
        })
        .collect()
}

fn json_waker(row: &WakerRow) -> JsonWaker {
    let WakerRow { waiting_site, kind, waker_site, waker_frames, wakes, waker_threads } = row;
    JsonWaker {
        waiting_site: waiting_site.clone(),
        kind: kind.name().to_string(),
        waker_site: waker_site.clone(),
        waker_frames: waker_frames.iter().map(json_frame).collect(),
        wakes: *wakes,
        waker_threads: waker_threads.iter().copied().collect(),
    }
}

fn json_stack(stack: &ProfileStack) -> JsonStack {
    let ProfileStack { frames, kind, object, truncated, in_progress, stats, process } = stack;
    let WaitStats { waits, total_ns, min_ns, max_ns, threads, lower_bound, log2_histogram } = stats;
    JsonStack {
        kind: kind.name().to_string(),
        object: object.clone(),
        still_blocked: *in_progress,
        truncated: *truncated,
        frames: frames.iter().map(json_frame).collect(),
        waits: *waits,
        total_ns: *total_ns,
        min_ns: *min_ns,
        max_ns: *max_ns,
        lower_bound: *lower_bound,
        threads: threads.iter().copied().collect(),
        log2_histogram: log2_histogram.clone(),
        process: process.as_ref().map(json_process),
    }
}

fn json_timeline(timeline: &Timeline) -> JsonTimeline {
    JsonTimeline {
        origin_unix_ns: timeline.origin_unix_ns,
        spans_dropped: timeline.spans_dropped,
        sites: timeline
            .seconds
            .iter()
            .map(|site| JsonSiteSeconds {
                site: site.site.clone(),
                kind: site.kind.name().to_string(),
                process: site.process.as_ref().map(json_process),
                threads: site.threads.clone(),
                blocked_ns: site.blocked_ns.clone(),
            })
            .collect(),
    }
}

fn timeline_of(timeline: JsonTimeline) -> Result<Timeline, String> {
    let JsonTimeline { origin_unix_ns, spans_dropped, sites } = timeline;
    let seconds = sites
        .into_iter()
        .map(|JsonSiteSeconds { site, kind, process, threads, blocked_ns }| {
            let kind = parse_wait_kind(&kind)
                .ok_or_else(|| format!("timeline: unknown wait kind {kind:?}"))?;
            Ok(SiteSeconds { site, kind, process: process.map(process_tag), threads, blocked_ns })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Timeline { origin_unix_ns, stacks: Vec::new(), spans: Vec::new(), spans_dropped, seconds })
}

pub(crate) fn json_process(process: &ProcessTag) -> JsonProcess {
    JsonProcess {
        pid: process.pid,
        comm: process.comm.clone(),
        cgroup: process.cgroup.clone(),
        container: process.container_id().map(str::to_string),
        modules: BTreeMap::new(),
    }
}

pub(crate) fn process_tag(process: JsonProcess) -> ProcessTag {
    ProcessTag { pid: process.pid, comm: process.comm, cgroup: process.cgroup }
}

fn json_frame(frame: &Frame) -> JsonFrame {
    let Frame { name, module, module_is_main, file, line, inlined, address } = frame;
    JsonFrame {
        name: name.clone(),
        module: module.clone(),
        main_module: *module_is_main,
        file: file.clone(),
        line: *line,
        inlined: *inlined,
        address: *address,
    }
}

fn json_trace_counts(counts: &TraceCounts) -> JsonTraceCounts {
    let TraceCounts {
        waits_started,
        waits_discarded,
        short_waits,
        long_waits,
        ring_buffer_full,
        stack_unreadable,
        stack_shortened,
        stack_partial,
        span_samples,
        span_samples_dropped,
        sleep_copies_whole,
        sleep_copies,
        late_copies,
        in_flight_map_full,
        wakes_seen,
        wake_ring_buffer_full,
        unwind_truncated,
        unknown_symbols,
        non_socket_io,
        unresolved_descriptors,
        peer_lookups_failed,
        socket_scans_failed,
        waits_unnamed,
        malformed_records,
        reads_lost,
        thread_reads_failed,
        waits_unread,
        waits_at_last_place,
        wakers_unmatched,
        go_parks_lost,
        go_stacks_lost,
        go_waits_lost,
        go_goroutines_skipped,
        go_objects_unnamed,
        go_runtime_waits_hidden,
        waits_begun_before,
    } = counts.clone();
    JsonTraceCounts {
        waits_started,
        waits_discarded,
        short_waits,
        long_waits,
        ring_buffer_full,
        stack_unreadable,
        stack_shortened,
        stack_partial,
        span_samples,
        span_samples_dropped,
        sleep_copies_whole,
        sleep_copies,
        late_copies,
        in_flight_map_full,
        wakes_seen,
        wake_ring_buffer_full,
        unwind_truncated,
        unknown_symbols,
        non_socket_io,
        unresolved_descriptors,
        peer_lookups_failed,
        socket_scans_failed,
        waits_unnamed,
        malformed_records,
        reads_lost,
        thread_reads_failed,
        waits_unread,
        waits_at_last_place,
        wakers_unmatched,
        go_parks_lost,
        go_stacks_lost,
        go_waits_lost,
        go_goroutines_skipped,
        go_objects_unnamed,
        go_runtime_waits_hidden,
        waits_begun_before,
    }
}

fn json_thread_counts(counts: &ThreadCounts) -> JsonThreadCounts {
    let ThreadCounts {
        threads,
        blocked_in_waits,
        elsewhere,
        exited_while_read,
        woke_while_read,
        unreadable,
        frame_pointer_unknown,
        runtime_hidden,
    } = counts.clone();
    JsonThreadCounts {
        threads,
        blocked_in_waits,
        elsewhere,
        exited_while_read,
        woke_while_read,
        unreadable,
        frame_pointer_unknown,
        runtime_hidden,
    }
}

pub fn kind_name(kind: ProfileKind) -> &'static str {
    match kind {
        ProfileKind::Recording => "recording",
        ProfileKind::Snapshot => "snapshot",
    }
}

pub fn parse_profile_kind(name: &str) -> Option<ProfileKind> {
    match name {
        "recording" => Some(ProfileKind::Recording),
        "snapshot" => Some(ProfileKind::Snapshot),
        _ => None,
    }
}

pub fn parse_wait_kind(name: &str) -> Option<WaitKind> {
    WaitKind::ALL.into_iter().find(|kind| kind.name() == name)
}

/// Reads a JSON profile written by any tracer of schema `tracer-profile/1` or `/2`.
pub fn read_json(bytes: &[u8]) -> Result<SavedProfile, JsonError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(JsonError::Syntax)?;
    let schema = match value.get("schema") {
        Some(serde_json::Value::String(schema))
            if schema == SCHEMA || schema == SCHEMA_WITHOUT_CHAINS =>
        {
            schema.clone()
        }
        Some(serde_json::Value::String(schema)) if schema.starts_with("tracer-profile/") => {
            return Err(JsonError::UnknownSchema(schema.clone()));
        }
        _ => return Err(JsonError::Foreign),
    };
    // Parsed again from the bytes, not from the value: its errors then say the line and
    // column of the field that is wrong.
    drop(value);
    let json: JsonProfile =
        serde_json::from_slice(bytes).map_err(|err| JsonError::Shape(schema, err))?;
    from_json(json)
}

pub fn from_json(json: JsonProfile) -> Result<SavedProfile, JsonError> {
    let JsonProfile {
        schema,
        tracer_version,
        kind,
        target,
        kernel,
        start_unix_ns,
        duration_ns,
        min_wait_ns,
        sample_period_ns,
        sample_reads,
        no_wakers,
        stacks,
        below_threshold,
        counts,
        thread_counts,
        endpoint_states,
        thread_names,
        wakers,
        modules,
        chains,
        processes,
        timeline,
        python,
        backed_up_sockets,
        backed_up_sockets_left_out,
    } = json;
    let has_chains = schema != SCHEMA_WITHOUT_CHAINS;
    let JsonTarget { pid, comm, command_line, exited, cgroup, container: _ } = target;
    let invalid = |what: String| JsonError::Invalid(what);
    let kind = parse_profile_kind(&kind)
        .ok_or_else(|| invalid(format!("unknown profile kind {kind:?}")))?;
    let stacks = stacks
        .into_iter()
        .enumerate()
        .map(|(index, stack)| {
            profile_stack(stack).map_err(|what| invalid(format!("stack {index}: {what}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_totals(&stacks).map_err(invalid)?;
    let wakers = wakers
        .into_iter()
        .map(|JsonWaker { waiting_site, kind, waker_site, waker_frames, wakes, waker_threads }| {
            let kind = parse_wait_kind(&kind)
                .ok_or_else(|| invalid(format!("wakers: unknown wait kind {kind:?}")))?;
            Ok(WakerRow {
                waiting_site,
                kind,
                waker_site,
                waker_frames: waker_frames.into_iter().map(frame).collect(),
                wakes,
                waker_threads: waker_threads.into_iter().collect(),
            })
        })
        .collect::<Result<Vec<_>, JsonError>>()?;
    let below_threshold = below_threshold
        .into_iter()
        .map(|JsonShortWaits { kind, waits, total_ns }| {
            let kind = parse_wait_kind(&kind)
                .ok_or_else(|| invalid(format!("below_threshold: unknown wait kind {kind:?}")))?;
            Ok((kind, ShortWaitTotals { count: waits, total_ns }))
        })
        .collect::<Result<Vec<_>, JsonError>>()?;
    let mut profile = Profile::new(kind, pid, comm);
    profile.start_unix_ns = start_unix_ns;
    profile.command_line = command_line.clone();
    profile.cgroup = cgroup;
    profile.duration = Duration::from_nanos(duration_ns);
    profile.min_wait = Duration::from_nanos(min_wait_ns);
    profile.sampling = sample_period_ns.map(|period_ns| Sampling {
        period: Duration::from_nanos(period_ns),
        reads: sample_reads.unwrap_or_default(),
    });
    profile.no_wakers = no_wakers;
    profile.target_exited = exited;
    profile.stacks = stacks;
    profile.below_threshold = below_threshold;
    profile.counts = trace_counts(counts);
    profile.thread_counts = thread_counts_of(thread_counts);
    profile.endpoint_states = endpoint_states;
    profile.thread_names = thread_names;
    profile.wakers = wakers;
    profile.processes = processes
        .into_iter()
        .map(|mut process| {
            if !process.modules.is_empty() {
                let modules = module_infos(std::mem::take(&mut process.modules));
                profile.process_modules.insert(process.pid, modules);
            }
            process_tag(process)
        })
        .collect();
    profile.timeline = timeline.map(timeline_of).transpose().map_err(invalid)?;
    profile.python =
        python.map(|JsonPython { version, missing, unreadable_frames, truncated_stacks }| {
            PythonInfo { version, missing, unreadable_frames, truncated_stacks }
        });
    profile.chains = if has_chains {
        wait_chains(chains).map_err(invalid)?
    } else {
        chains::build(&profile, &ChainFacts::default())
    };
    profile.modules = module_infos(modules);
    profile.backed_up = BackedUp {
        sockets: backed_up_sockets
            .into_iter()
            .enumerate()
            .map(|(index, socket)| {
                backed_up_socket(socket)
                    .map_err(|what| invalid(format!("backed_up_sockets {index}: {what}")))
            })
            .collect::<Result<_, _>>()?,
        left_out: backed_up_sockets_left_out,
    };
    let provenance = Provenance { tracer_version, kernel, command_line };
    Ok(SavedProfile { profile, provenance, left_out: Vec::new() })
}

fn profile_stack(stack: JsonStack) -> Result<ProfileStack, String> {
    let JsonStack {
        kind,
        object,
        still_blocked,
        truncated,
        frames,
        waits,
        total_ns,
        min_ns,
        max_ns,
        lower_bound,
        threads,
        log2_histogram,
        process,
    } = stack;
    let kind = parse_wait_kind(&kind).ok_or_else(|| format!("unknown wait kind {kind:?}"))?;
    if min_ns > max_ns {
        return Err(format!("min_ns {min_ns} is over max_ns {max_ns}"));
    }
    let frames = frames.into_iter().map(frame).collect();
    let threads: BTreeSet<u64> = threads.into_iter().collect();
    let stats = WaitStats { waits, total_ns, min_ns, max_ns, threads, lower_bound, log2_histogram };
    let process = process.map(process_tag);
    Ok(ProfileStack { frames, kind, object, truncated, in_progress: still_blocked, stats, process })
}

fn frame(json: JsonFrame) -> Frame {
    let JsonFrame { name, module, main_module, file, line, inlined, address } = json;
    Frame { name, module, module_is_main: main_module, file, line, inlined, address }
}

/// The reports add up waits and blocked time over stacks: their sums must fit, with
/// room for pprof's signed values.
pub fn check_totals(stacks: &[ProfileStack]) -> Result<(), String> {
    let limit = i64::MAX as u64;
    let mut waits = 0u64;
    let mut total_ns = 0u64;
    for stack in stacks {
        waits = waits.saturating_add(stack.stats.waits);
        total_ns = total_ns.saturating_add(stack.stats.total_ns);
        if waits > limit || total_ns > limit || stack.stats.max_ns > limit {
            return Err("waits or blocked time over 2^63 (corrupt file?)".to_string());
        }
    }
    Ok(())
}

fn trace_counts(counts: JsonTraceCounts) -> TraceCounts {
    let JsonTraceCounts {
        waits_started,
        waits_discarded,
        short_waits,
        long_waits,
        ring_buffer_full,
        stack_unreadable,
        stack_shortened,
        stack_partial,
        span_samples,
        span_samples_dropped,
        sleep_copies_whole,
        sleep_copies,
        late_copies,
        in_flight_map_full,
        wakes_seen,
        wake_ring_buffer_full,
        unwind_truncated,
        unknown_symbols,
        non_socket_io,
        unresolved_descriptors,
        peer_lookups_failed,
        socket_scans_failed,
        waits_unnamed,
        malformed_records,
        reads_lost,
        thread_reads_failed,
        waits_unread,
        waits_at_last_place,
        wakers_unmatched,
        go_parks_lost,
        go_stacks_lost,
        go_waits_lost,
        go_goroutines_skipped,
        go_objects_unnamed,
        go_runtime_waits_hidden,
        waits_begun_before,
    } = counts;
    TraceCounts {
        waits_started,
        waits_discarded,
        short_waits,
        long_waits,
        ring_buffer_full,
        stack_unreadable,
        stack_shortened,
        stack_partial,
        span_samples,
        span_samples_dropped,
        sleep_copies_whole,
        sleep_copies,
        late_copies,
        in_flight_map_full,
        wakes_seen,
        wake_ring_buffer_full,
        unwind_truncated,
        unknown_symbols,
        non_socket_io,
        unresolved_descriptors,
        peer_lookups_failed,
        socket_scans_failed,
        waits_unnamed,
        malformed_records,
        reads_lost,
        thread_reads_failed,
        waits_unread,
        waits_at_last_place,
        wakers_unmatched,
        go_parks_lost,
        go_stacks_lost,
        go_waits_lost,
        go_goroutines_skipped,
        go_objects_unnamed,
        go_runtime_waits_hidden,
        waits_begun_before,
    }
}

fn thread_counts_of(counts: JsonThreadCounts) -> ThreadCounts {
    let JsonThreadCounts {
        threads,
        blocked_in_waits,
        elsewhere,
        exited_while_read,
        woke_while_read,
        unreadable,
        frame_pointer_unknown,
        runtime_hidden,
    } = counts;
    ThreadCounts {
        threads,
        blocked_in_waits,
        elsewhere,
        exited_while_read,
        woke_while_read,
        unreadable,
        frame_pointer_unknown,
        runtime_hidden,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        fixtures::{fixture_profile, fixture_provenance},
        summary::format_duration,
    };

    #[test]
    fn a_profile_survives_the_round_trip() {
        let profile = fixture_profile();
        let mut bytes = Vec::new();
        write_json(&profile, &fixture_provenance(), &mut bytes).unwrap();
        let saved = read_json(&bytes).unwrap();
        assert_eq!(saved.provenance, fixture_provenance());
        let again = to_json(&saved.profile, &saved.provenance);
        let mut bytes_again = Vec::new();
        serde_json::to_writer_pretty(&mut bytes_again, &again).unwrap();
        bytes_again.push(b'\n');
        assert_eq!(String::from_utf8(bytes_again).unwrap(), String::from_utf8(bytes).unwrap());
    }

    #[test]
    fn a_sampled_recording_keeps_its_sampling() {
        let mut profile = fixture_profile();
        let sampling = Sampling { period: Duration::from_millis(20), reads: 150 };
        profile.sampling = Some(sampling);
        let mut bytes = Vec::new();
        write_json(&profile, &fixture_provenance(), &mut bytes).unwrap();
        assert_eq!(read_json(&bytes).unwrap().profile.sampling, Some(sampling));
        // An exact recording writes no sampling fields at all.
        let mut exact = Vec::new();
        write_json(&fixture_profile(), &fixture_provenance(), &mut exact).unwrap();
        assert!(!String::from_utf8(exact).unwrap().contains("sample_"));
    }

    #[test]
    fn a_field_of_the_wrong_type_is_said_with_its_place() {
        let mut bytes = Vec::new();
        write_json(&fixture_profile(), &fixture_provenance(), &mut bytes).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let field = "\"duration_ns\": ";
        assert!(text.contains(field), "{text}");
        // The field a string, its number left to an unknown field (ignored).
        let wrong = text.replacen(field, "\"duration_ns\": \"three seconds\", \"x\": ", 1);
        let Err(err @ JsonError::Shape(..)) = read_json(wrong.as_bytes()) else {
            panic!("a wrong type is a shape error");
        };
        let said = format!("{:#}", anyhow::Error::from(err));
        assert!(said.contains("expected u64 at line "), "{said}");
    }

    #[test]
    fn rare_losses_are_kept_and_left_out_when_none() {
        let mut profile = fixture_profile();
        profile.counts.peer_lookups_failed = 2;
        profile.counts.waits_unnamed = 5;
        profile.counts.thread_reads_failed = 3;
        profile.counts.waits_unread = 4;
        profile.counts.waits_at_last_place = 7;
        let mut bytes = Vec::new();
        write_json(&profile, &fixture_provenance(), &mut bytes).unwrap();
        let read = read_json(&bytes).unwrap().profile.counts;
        assert_eq!((read.peer_lookups_failed, read.waits_unnamed), (2, 5));
        assert_eq!(read.thread_reads_failed, 3);
        assert_eq!((read.waits_unread, read.waits_at_last_place), (4, 7));
        let mut none = Vec::new();
        write_json(&fixture_profile(), &fixture_provenance(), &mut none).unwrap();
        let none = String::from_utf8(none).unwrap();
        assert!(!none.contains("peer_lookups_failed") && !none.contains("waits_unnamed"));
        assert!(!none.contains("thread_reads_failed"));
    }

    #[test]
    fn a_recording_without_wakers_says_so_when_read_again() {
        let mut profile = fixture_profile();
        profile.no_wakers = true;
        let mut bytes = Vec::new();
        write_json(&profile, &fixture_provenance(), &mut bytes).unwrap();
        assert!(read_json(&bytes).unwrap().profile.no_wakers);
        // With wakers (the default) the field is left out.
        let mut with_wakers = Vec::new();
        write_json(&fixture_profile(), &fixture_provenance(), &mut with_wakers).unwrap();
        assert!(!String::from_utf8(with_wakers).unwrap().contains("no_wakers"));
    }

    #[test]
    fn a_python_process_keeps_its_interpreter_and_what_was_missing() {
        let mut profile = fixture_profile();
        let python = PythonInfo {
            version: "3.11".into(),
            missing: Some("an exact recording ...".into()),
            unreadable_frames: 2,
            truncated_stacks: 1,
        };
        profile.python = Some(python.clone());
        let mut bytes = Vec::new();
        write_json(&profile, &fixture_provenance(), &mut bytes).unwrap();
        assert_eq!(read_json(&bytes).unwrap().profile.python, Some(python));
        // Any other process writes no python section.
        let mut native = Vec::new();
        write_json(&fixture_profile(), &fixture_provenance(), &mut native).unwrap();
        assert!(!String::from_utf8(native).unwrap().contains("\"python\""));
    }

    #[test]
    fn foreign_and_future_files_are_told_apart() {
        let message = |bytes: &[u8]| read_json(bytes).unwrap_err().to_string();
        assert_eq!(
            message(br#"{"name": "x"}"#),
            "not a tracer profile (no \"schema\": \"tracer-profile/2\")"
        );
        assert_eq!(
            message(b"[1, 2]"),
            "not a tracer profile (no \"schema\": \"tracer-profile/2\")"
        );
        assert_eq!(
            message(br#"{"schema": "tracer-profile/9"}"#),
            "schema \"tracer-profile/9\" is not one this tracer reads (it reads \"tracer-profile/1\" \
             and \"tracer-profile/2\")"
        );
        assert_eq!(
            message(br#"{"schema": "tracer-profile/1"}"#),
            "not a valid tracer-profile/1 profile"
        );
        assert_eq!(message(br#"{"schema": "tracer-pro"#), "not valid JSON");
    }

    /// A chain's end of a type a later tracer writes is read as unknown; one taken in
    /// turns survives the round trip.
    #[test]
    fn chain_ends_of_a_later_kind_are_read_as_unknown() {
        let mut profile = fixture_profile();
        profile.chains[0].terminal = chains::Terminal::Peers(3);
        let mut bytes = Vec::new();
        write_json(&profile, &fixture_provenance(), &mut bytes).unwrap();
        assert_eq!(read_json(&bytes).unwrap().profile.chains, profile.chains);
        let mut later: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        later["chains"][0]["terminal"] = serde_json::json!({"type": "later_kind", "n": 1});
        let read = read_json(later.to_string().as_bytes()).unwrap().profile;
        assert!(
            matches!(&read.chains[0].terminal, chains::Terminal::Unknown(why) if why.contains("does not know")),
            "{:?}",
            read.chains[0].terminal
        );
    }

    #[test]
    fn chains_survive_the_round_trip_and_older_files_get_theirs_joined() {
        let profile = fixture_profile();
        assert!(!profile.chains.is_empty(), "the fixture has a chain");
        let mut bytes = Vec::new();
        write_json(&profile, &fixture_provenance(), &mut bytes).unwrap();
        assert_eq!(read_json(&bytes).unwrap().profile.chains, profile.chains);
        // A file of the schema before chains: joined from its stacks and wakers, without
        // the peer only the live system could name.
        let mut older: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        older["schema"] = SCHEMA_WITHOUT_CHAINS.into();
        older.as_object_mut().unwrap().remove("chains");
        let read = read_json(older.to_string().as_bytes()).unwrap().profile;
        let line = |profile: &Profile| -> Vec<String> {
            profile.chains.iter().map(|c| chains::chain_line(c, format_duration)).collect()
        };
        assert_eq!(
            line(&read),
            ["3 threads at app::send_stat [futex app::STATS] ← woken by reporter, blocked \
                 1.29s in app::write_to_backend [send 10.0.0.5:80: send buffer full (4608/4608 \
                 bytes), peer window zero]"]
        );
    }
}
