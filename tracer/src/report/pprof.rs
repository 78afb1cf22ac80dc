//! pprof's `profile.proto`, gzip-compressed: what `go tool pprof`, Pyroscope, Grafana
//! and Parca read. Also read back by `tracer report` (only files tracer wrote).
//!
//! Layout:
//! - sample types: a recording has `waits/count` and `blocked/nanoseconds`, a
//!   snapshot `threads/count` and `blocked/nanoseconds`; one sample per stack;
//! - locations carry their module's mapping (path, build id, address range and the file
//!   offset mapped at its start) and one `Line` per inlined function, innermost first;
//! - the leaf location is the wait-kind frame of the folded stacks (`[futex]`,
//!   `[send 10.0.0.5:80 still-blocked]`), and a stack whose unwinding stopped early
//!   has a `[truncated]` root, so every pprof view matches the flamegraph;
//! - labels on each sample: `wait_kind`, `object` (when known), `still_blocked`
//!   (`true` on waits still in progress at the end of a recording), `truncated`,
//!   `lower_bound`, `pid` (numeric) and `comm` in a profile of several processes, one
//!   `thread` label per distinct thread name and one numeric `tid`
//!   label per thread, `shortest_wait`/`longest_wait` in nanoseconds, and `chain`: the
//!   heaviest wait chain that starts at or passes through the sample's call site, as
//!   the summary prints it;
//! - comments, one `key: value` each: tracer version, profile kind, pid, comm,
//!   command line, kernel, threshold, cgroup, the Python interpreter's version and what
//!   its frames lost, and every counter of what was seen and lost.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{Read as _, Write},
    time::Duration,
};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use prost::Message as _;
use tracer_common::ShortWaitTotals;

use crate::{
    chains,
    model::{
        ModuleInfo, ProcessTag, Profile, ProfileKind, ProfileStack, ThreadCounts, TraceCounts,
        WaitStats,
    },
    report::{
        Provenance, SavedProfile, Weight,
        folded::{TRUNCATED_FRAME, kind_frame},
        json::{check_totals, kind_name, parse_profile_kind, parse_wait_kind},
        summary::format_duration,
    },
    stacks::{Frame, PYTHON_MODULE},
};

#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

/// `Function.system_name` of the frames tracer adds (wait kind, `[truncated]`), so
/// that reading the file back drops them.
const SYNTHETIC: &str = "tracer:synthetic";

/// A gzip file that inflates past this is not a profile of ours (a stack-heavy hour
/// of recording is a few MiB).
const MAX_DECOMPRESSED: u64 = super::MAX_SAVED_PROFILE_BYTES;

pub fn write_pprof(
    profile: &Profile,
    provenance: &Provenance,
    weight: Weight,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let encoded = build(profile, provenance, weight).encode_to_vec();
    let mut gzip = GzEncoder::new(out, Compression::default());
    gzip.write_all(&encoded)?;
    gzip.finish()?;
    Ok(())
}

/// A count profile as Go's `runtime/pprof` writes one (its goroutine profile, `name`
/// "goroutine"): period and sample type `NAME/count`, period 1, one sample per stack
/// valued by its waits (for a snapshot of goroutines: its goroutines), with only the
/// stack's own frames (Go's profiles have no wait-kind or `[truncated]` frames) and an
/// `object` label (the wait reason, and what is waited on). The comments say where it
/// came from, as in every profile tracer writes.
pub fn write_count_pprof(
    profile: &Profile,
    provenance: &Provenance,
    name: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (mut builder, main_module) = Builder::new(profile);
    let sample_type = vec![builder.value_type(name, "count")];
    let period_type = Some(builder.value_type(name, "count"));
    let samples = profile
        .stacks
        .iter()
        .map(|stack| {
            let location_id = location_groups(&stack.frames)
                .into_iter()
                .rev()
                .map(|group| builder.location(group, stack.process.as_ref().map(|p| p.pid)))
                .collect();
            let label = stack.object.iter().map(|object| builder.label("object", object)).collect();
            proto::Sample { location_id, value: vec![stack.stats.waits as i64], label }
        })
        .collect();
    let comment = comments(profile, provenance, main_module.as_deref())
        .iter()
        .map(|comment| builder.string(comment))
        .collect();
    let Builder { strings, functions, mappings, locations, .. } = builder;
    let encoded = proto::Profile {
        sample_type,
        sample: samples,
        mapping: mappings,
        location: locations,
        function: functions,
        string_table: strings,
        time_nanos: profile
            .start_unix_ns
            .map_or(0, |start| i64::try_from(start).unwrap_or(i64::MAX)),
        period_type,
        period: 1,
        comment,
        ..proto::Profile::default()
    }
    .encode_to_vec();
    let mut gzip = GzEncoder::new(out, Compression::default());
    gzip.write_all(&encoded)?;
    gzip.finish()?;
    Ok(())
}

/// The module of the first frame in the target's main executable: pprof's convention
/// puts it in mapping[0].
fn main_module(profile: &Profile) -> Option<String> {
    profile
        .stacks
        .iter()
        .flat_map(|stack| &stack.frames)
        .find(|frame| frame.module_is_main)
        .map(|frame| frame.module.clone())
}

/// Interns strings, functions, mappings and locations, so that each is stored once
/// and every reference resolves.
#[derive(Default)]
struct Builder {
    /// The target's modules, to describe mappings (path, build id, range).
    modules: BTreeMap<String, ModuleInfo>,
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(i64, i64, i64), u64>,
    /// Each process's modules, in a profile of several (see `Profile::process_modules`).
    process_modules: BTreeMap<u32, BTreeMap<String, ModuleInfo>>,
    mappings: Vec<proto::Mapping>,
    /// By process (0: the profile's own modules) and module.
    mapping_ids: HashMap<u32, HashMap<String, u64>>,
    locations: Vec<proto::Location>,
    location_ids: HashMap<LocationKey, u64>,
}

/// A location by mapping, address and lines (function id, line number), innermost first.
type LocationKey = (u64, u64, Vec<(u64, i64)>);

impl Builder {
    /// A builder for `profile`'s tables, with its main module (named in the comments).
    fn new(profile: &Profile) -> (Self, Option<String>) {
        let mut builder = Builder {
            modules: profile.modules.clone(),
            process_modules: profile.process_modules.clone(),
            ..Builder::default()
        };
        builder.string(""); // string_table[0] is always ""
        // mapping[0] is the main executable, by pprof's convention (in a profile of
        // several processes, the first one's).
        let main_module = main_module(profile);
        if let Some(main) = &main_module {
            builder.mapping(main, profile.process_modules.keys().next().copied());
        }
        (builder, main_module)
    }

    fn string(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(text) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(text.to_string());
        self.string_ids.insert(text.to_string(), id);
        id
    }

    fn function(&mut self, name: &str, system_name: &str, file: &str) -> u64 {
        let key = (self.string(name), self.string(system_name), self.string(file));
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(proto::Function {
            id,
            name: key.0,
            system_name: key.1,
            filename: key.2,
            start_line: 0,
        });
        self.function_ids.insert(key, id);
        id
    }

    /// The mapping of `module`: of process `pid`'s in a profile of several, where each
    /// process mapped it at its own place.
    fn mapping(&mut self, module: &str, pid: Option<u32>) -> u64 {
        // Called for every location: looked up without copying the module or its name.
        let of_process = |pid: &u32| {
            self.process_modules.get(pid).is_some_and(|modules| modules.contains_key(module))
        };
        let key_pid = pid.filter(of_process).unwrap_or(0);
        if let Some(&id) = self.mapping_ids.get(&key_pid).and_then(|ids| ids.get(module)) {
            return id;
        }
        let info = match key_pid {
            0 => self.modules.get(module),
            pid => self.process_modules.get(&pid).and_then(|modules| modules.get(module)),
        }
        .cloned();
        let id = self.mappings.len() as u64 + 1;
        let filename = match &info {
            Some(info) => self.string(&info.path),
            None => self.string(module),
        };
        let build_id = match info.as_ref().and_then(|info| info.build_id.as_deref()) {
            Some(build_id) => self.string(build_id),
            None => 0,
        };
        self.mappings.push(proto::Mapping {
            id,
            filename,
            build_id,
            memory_start: info.as_ref().map_or(0, |info| info.start),
            memory_limit: info.as_ref().map_or(0, |info| info.end),
            file_offset: info.as_ref().map_or(0, |info| info.file_offset),
            has_functions: true,
            ..proto::Mapping::default()
        });
        self.mapping_ids.entry(key_pid).or_default().insert(module.to_string(), id);
        id
    }

    /// One location: the frames of one address, outermost (the containing function)
    /// first as in a `ProfileStack`, of process `pid` in a profile of several.
    fn location(&mut self, frames: &[Frame], pid: Option<u32>) -> u64 {
        let first = &frames[0];
        let mapping_id = self.mapping(&first.module, pid);
        let mut lines: Vec<(u64, i64)> = frames
            .iter()
            .map(|frame| {
                let file = frame.file.as_deref().unwrap_or_default();
                // A Python frame's function is its name; its line is in its name too.
                let function = self.function(frame.function_name(), &frame.name, file);
                (function, frame.line.map_or(0, i64::from))
            })
            .collect();
        lines.reverse(); // pprof: innermost first, the containing function last
        let mapping = &mut self.mappings[mapping_id as usize - 1];
        mapping.has_filenames |= frames.iter().any(|frame| frame.file.is_some());
        mapping.has_line_numbers |= frames.iter().any(|frame| frame.line.is_some());
        mapping.has_inline_frames |= frames.len() > 1;
        self.intern_location(mapping_id, first.address, lines)
    }

    fn synthetic_location(&mut self, name: &str) -> u64 {
        let function = self.function(name, SYNTHETIC, "");
        self.intern_location(0, 0, vec![(function, 0)])
    }

    fn intern_location(&mut self, mapping_id: u64, address: u64, lines: Vec<(u64, i64)>) -> u64 {
        let key = (mapping_id, address, lines);
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(proto::Location {
            id,
            mapping_id,
            address,
            line: key
                .2
                .iter()
                .map(|&(function_id, line)| proto::Line { function_id, line, column: 0 })
                .collect(),
            is_folded: false,
        });
        self.location_ids.insert(key, id);
        id
    }

    /// A label whose value may be a name the process chose (a thread's, a socket's path):
    /// written out, as in the comments.
    fn label(&mut self, key: &str, value: &str) -> proto::Label {
        let key = self.string(key);
        let value = self.string(&super::escape_name(value));
        proto::Label { key, str: value, num: 0, num_unit: 0 }
    }

    fn number_label(&mut self, key: &str, num: u64, unit: &str) -> proto::Label {
        let num_unit = if unit.is_empty() { 0 } else { self.string(unit) };
        proto::Label { key: self.string(key), str: 0, num: num as i64, num_unit }
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> proto::ValueType {
        proto::ValueType { r#type: self.string(kind), unit: self.string(unit) }
    }
}

/// The frames of a stack (root first) grouped by location: a frame starts a new group
/// unless it is inlined at the same address of the same module as the group.
fn location_groups(frames: &[Frame]) -> Vec<&[Frame]> {
    let mut groups = Vec::new();
    let mut start = 0;
    for index in 1..=frames.len() {
        let ends = frames.get(index).is_none_or(|frame| {
            let first = &frames[start];
            !frame.inlined || frame.address != first.address || frame.module != first.module
        });
        if ends {
            groups.push(&frames[start..index]);
            start = index;
        }
    }
    groups
}

/// The first value's type: what a sample counts.
fn count_type(kind: ProfileKind) -> &'static str {
    match kind {
        ProfileKind::Recording => "waits",
        ProfileKind::Snapshot => "threads",
    }
}

fn build(profile: &Profile, provenance: &Provenance, weight: Weight) -> proto::Profile {
    let (mut builder, main_module) = Builder::new(profile);
    let count_type = count_type(profile.kind);
    let sample_type =
        vec![builder.value_type(count_type, "count"), builder.value_type("blocked", "nanoseconds")];
    let default_sample_type = match weight {
        Weight::Time => "blocked",
        Weight::Count | Weight::Threads => count_type,
    };
    // Each site a chain starts at or passes through, heaviest chain first: a stack takes
    // the first whose site it waits at (for a goroutine, with the same wait reason too:
    // the lockers of a mutex and its holder may share a call site).
    let chain_lines: Vec<(&chains::ChainSite, String)> = profile
        .chains
        .iter()
        .flat_map(|chain| {
            let line = chains::chain_line(chain, format_duration);
            let sites = std::iter::once(&chain.start).chain(chain.hops.iter().map(|hop| &hop.at));
            sites.map(move |site| (site, line.clone()))
        })
        .collect();
    let samples = profile
        .stacks
        .iter()
        .map(|stack| {
            let chain = chain_lines.iter().find(|(site, _)| site.matches(stack));
            sample(&mut builder, profile, stack, chain.map(|(_, line)| line))
        })
        .collect();
    let comments: Vec<i64> = comments(profile, provenance, main_module.as_deref())
        .iter()
        .map(|comment| builder.string(comment))
        .collect();
    let period_type = Some(builder.value_type(count_type, "count"));
    let default_sample_type = builder.string(default_sample_type);
    let Builder { strings, functions, mappings, locations, .. } = builder;
    proto::Profile {
        sample_type,
        sample: samples,
        mapping: mappings,
        location: locations,
        function: functions,
        string_table: strings,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: profile
            .start_unix_ns
            .map_or(0, |start| i64::try_from(start).unwrap_or(i64::MAX)),
        duration_nanos: profile.duration.as_nanos().min(i64::MAX as u128) as i64,
        period_type,
        // Every wait is counted, none sampled.
        period: 1,
        comment: comments,
        default_sample_type,
    }
}

fn sample(
    builder: &mut Builder,
    profile: &Profile,
    stack: &ProfileStack,
    chain: Option<&String>,
) -> proto::Sample {
    let mut location_id = vec![builder.synthetic_location(&kind_frame(profile, stack))];
    let pid = stack.process.as_ref().map(|process| process.pid);
    for group in location_groups(&stack.frames).into_iter().rev() {
        location_id.push(builder.location(group, pid));
    }
    if stack.truncated {
        location_id.push(builder.synthetic_location(TRUNCATED_FRAME));
    }
    let stats = &stack.stats;
    let count = match profile.kind {
        ProfileKind::Recording => stats.waits,
        ProfileKind::Snapshot => stats.threads.len() as u64,
    };
    let mut label = vec![builder.label("wait_kind", stack.kind.name())];
    if let Some(process) = &stack.process {
        label.push(builder.number_label("pid", u64::from(process.pid), ""));
        label.push(builder.label("comm", &process.comm));
        if let Some(cgroup) = &process.cgroup {
            label.push(builder.label("cgroup", cgroup));
        }
        if let Some(container) = process.container_id() {
            label.push(builder.label("container", container));
        }
    }
    if let Some(object) = &stack.object {
        label.push(builder.label("object", object));
    }
    if stack.in_progress && profile.kind == ProfileKind::Recording {
        label.push(builder.label("still_blocked", "true"));
    }
    if stack.truncated {
        label.push(builder.label("truncated", "true"));
    }
    if stats.lower_bound {
        label.push(builder.label("lower_bound", "true"));
    }
    let names: BTreeSet<&str> = stats
        .threads
        .iter()
        .filter_map(|&tid| profile.thread_names.get(&u32::try_from(tid).ok()?))
        .map(String::as_str)
        .collect();
    for name in names {
        label.push(builder.label("thread", name));
    }
    for &tid in &stats.threads {
        label.push(builder.number_label("tid", tid, ""));
    }
    if let Some(chain) = chain {
        label.push(builder.label("chain", chain));
    }
    label.push(builder.number_label("shortest_wait", stats.min_ns, "nanoseconds"));
    label.push(builder.number_label("longest_wait", stats.max_ns, "nanoseconds"));
    proto::Sample { location_id, value: vec![count as i64, stats.total_ns as i64], label }
}

/// Counters only a Go profile has: written only when not zero, as in the JSON.
const GO_ONLY: [&str; 7] = [
    "go_parks_lost",
    "go_stacks_lost",
    "go_waits_lost",
    "go_goroutines_skipped",
    "go_objects_unnamed",
    "go_runtime_waits_hidden",
    "runtime_hidden",
];

fn pairs<'a>(fields: impl IntoIterator<Item = (&'static str, &'a mut u64)>) -> String {
    let pairs: Vec<String> = fields
        .into_iter()
        .filter(|(name, value)| **value != 0 || !GO_ONLY.contains(name))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    pairs.join(" ")
}

/// The "not kept:" comment's words: a recording's timeline (the SVG's chart of threads
/// blocked by second) and its waits' histograms of lengths (in the JSON).
const NOT_KEPT_TIMELINE: &str = "timeline";
const NOT_KEPT_HISTOGRAMS: &str = "histograms";
const NOT_KEPT_BACKED_UP: &str = "backed-up-sockets";

fn comments(profile: &Profile, provenance: &Provenance, main_module: Option<&str>) -> Vec<String> {
    let mut comments = vec![
        format!("tracer: {}", provenance.tracer_version),
        format!("kind: {}", kind_name(profile.kind)),
        format!("pid: {}", profile.pid),
        format!("comm: {}", profile.comm),
    ];
    if let Some(command_line) = &provenance.command_line {
        comments.push(format!("command line: {}", shell_words(command_line)));
    }
    if let Some(kernel) = &provenance.kernel {
        comments.push(format!("kernel: {kernel}"));
    }
    comments.push(format!("min wait: {}ns", profile.min_wait.as_nanos()));
    if let Some(sampling) = profile.sampling {
        comments.push(format!("sample period: {}ns", sampling.period.as_nanos()));
        comments.push(format!("sample reads: {}", sampling.reads));
    }
    if profile.no_wakers {
        comments.push("wakers: not recorded".to_string());
    }
    comments.push(format!("target exited: {}", profile.target_exited));
    if let Some(cgroup) = &profile.cgroup {
        comments.push(format!("cgroup: {cgroup}"));
    }
    if let Some(python) = &profile.python {
        comments.push(format!("python: {}", python.version));
        comments.push(format!(
            "python frames lost: unreadable_frames={} truncated_stacks={}",
            python.unreadable_frames, python.truncated_stacks
        ));
        if let Some(missing) = &python.missing {
            comments.push(format!("python missing: {missing}"));
        }
    }
    if let Some(main) = main_module {
        comments.push(format!("main module: {main}"));
    }
    // What pprof has no place for, for `tracer report` to say it is gone.
    let mut not_kept = Vec::new();
    if profile.timeline.is_some() {
        not_kept.push(NOT_KEPT_TIMELINE);
    }
    if profile.stacks.iter().any(|stack| !stack.stats.log2_histogram.is_empty()) {
        not_kept.push(NOT_KEPT_HISTOGRAMS);
    }
    // Said to pprof's reader, one line each (pprof's header prints them), not read back.
    if !profile.backed_up.is_empty() {
        not_kept.push(NOT_KEPT_BACKED_UP);
        for socket in &profile.backed_up.sockets {
            let idle = socket.idle.map_or(String::new(), |idle| {
                format!(", idle {}", super::summary::format_duration(idle.as_nanos() as u64))
            });
            let process = socket.process.as_ref().map_or(String::new(), |p| format!(" of {p}"));
            let queued = socket.queued().map_or(String::new(), |bytes| {
                format!(", {} queued", super::summary::format_bytes(bytes))
            });
            comments.push(format!(
                "backed up: {} {}{process} fd {}{queued}: {}{idle}",
                socket.backlog.name(),
                socket.peer,
                socket.fd,
                socket.reason(),
            ));
        }
        if profile.backed_up.left_out > 0 {
            comments.push(format!("backed up: {} more", profile.backed_up.left_out));
        }
    }
    if !not_kept.is_empty() {
        comments.push(format!("not kept: {}", not_kept.join(" ")));
    }
    let mut counts = profile.counts.clone();
    let mut fields = counts.fields_mut().into_iter();
    comments.push(format!("lost: {}", pairs(fields.by_ref().take(TraceCounts::LOSSES))));
    comments.push(format!("seen: {}", pairs(fields)));
    comments.push(format!("threads read: {}", pairs(profile.thread_counts.clone().fields_mut())));
    // One line each, so that pprof's header (which prints every comment) stays short.
    if !profile.below_threshold.is_empty() {
        let kinds: Vec<String> = profile
            .below_threshold
            .iter()
            .map(|(kind, totals)| {
                format!("{} waits={} total_ns={}", kind.name(), totals.count, totals.total_ns)
            })
            .collect();
        comments.push(format!("under the threshold: {}", kinds.join(", ")));
    }
    for (endpoint, state) in &profile.endpoint_states {
        comments.push(format!("endpoint state: {endpoint} = {state}"));
    }
    if !profile.thread_names.is_empty() {
        let names: Vec<String> =
            profile.thread_names.iter().map(|(tid, name)| format!("{tid}={name}")).collect();
        comments.push(format!("thread names: {}", shell_words(&names)));
    }
    // `go tool pprof` prints the comments as they are: a command line or thread name
    // the process chose must not drive the terminal (read back, each stays as written
    // out, which every report shows it as anyway).
    comments.into_iter().map(|comment| super::escape_name(&comment).into_owned()).collect()
}

/// Arguments joined by spaces, quoted like a shell when they need it.
fn shell_words(args: &[String]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain { arg.clone() } else { format!("'{}'", arg.replace('\'', r"'\''")) }
        })
        .collect();
    quoted.join(" ")
}

/// The inverse of `shell_words`.
fn split_shell_words(text: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' => args.extend(current.take()),
            '\'' => {
                let arg = current.get_or_insert_with(String::new);
                for quoted in chars.by_ref() {
                    if quoted == '\'' {
                        break;
                    }
                    arg.push(quoted);
                }
            }
            '\\' => {
                let arg = current.get_or_insert_with(String::new);
                arg.extend(chars.next());
            }
            _ => current.get_or_insert_with(String::new).push(c),
        }
    }
    args.extend(current);
    args
}

/// Why a file is not a pprof profile `tracer report` can read.
#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    /// The gzip stream is cut short or damaged.
    #[error("truncated or corrupt gzip data")]
    Gzip(#[source] std::io::Error),
    /// It inflates to more than any profile of ours.
    #[error("inflates to more than {} MiB", MAX_DECOMPRESSED >> 20)]
    TooLarge,
    /// The inflated bytes are not a `profile.proto` message.
    #[error("not a pprof profile")]
    Decode(#[source] prost::DecodeError),
    /// A pprof profile, but not one tracer wrote.
    #[error("a pprof profile not written by tracer (no \"tracer:\" comment)")]
    Foreign,
    /// A reference or value that does not hold.
    #[error("{0}")]
    Invalid(String),
}

/// Reads a gzip-compressed pprof profile that tracer wrote.
pub fn read_pprof(bytes: &[u8]) -> Result<SavedProfile, PprofError> {
    let mut inflated = Vec::new();
    GzDecoder::new(bytes)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut inflated)
        .map_err(PprofError::Gzip)?;
    if inflated.len() as u64 > MAX_DECOMPRESSED {
        return Err(PprofError::TooLarge);
    }
    let decoded = proto::Profile::decode(inflated.as_slice()).map_err(PprofError::Decode)?;
    from_proto(&decoded)
}

/// Resolves the references of a decoded profile, checking each.
struct Tables<'a> {
    profile: &'a proto::Profile,
    functions: HashMap<u64, &'a proto::Function>,
    mappings: HashMap<u64, &'a proto::Mapping>,
    locations: HashMap<u64, &'a proto::Location>,
}

impl<'a> Tables<'a> {
    fn new(profile: &'a proto::Profile) -> Result<Self, PprofError> {
        fn by_id<'a, T>(
            items: &'a [T],
            id: impl Fn(&T) -> u64,
            what: &str,
        ) -> Result<HashMap<u64, &'a T>, PprofError> {
            let mut map = HashMap::with_capacity(items.len());
            for item in items {
                if id(item) == 0 || map.insert(id(item), item).is_some() {
                    return Err(invalid(format!("{what} id {} is zero or repeated", id(item))));
                }
            }
            Ok(map)
        }
        if profile.string_table.first().is_some_and(|first| !first.is_empty()) {
            return Err(invalid("string_table[0] is not empty".to_string()));
        }
        Ok(Self {
            profile,
            functions: by_id(&profile.function, |f| f.id, "function")?,
            mappings: by_id(&profile.mapping, |m| m.id, "mapping")?,
            locations: by_id(&profile.location, |l| l.id, "location")?,
        })
    }

    fn string(&self, index: i64) -> Result<&'a str, PprofError> {
        usize::try_from(index)
            .ok()
            .and_then(|index| self.profile.string_table.get(index))
            .map(String::as_str)
            .ok_or_else(|| invalid(format!("string index {index} out of range")))
    }

    fn location(&self, id: u64) -> Result<&'a proto::Location, PprofError> {
        self.locations.get(&id).copied().ok_or_else(|| invalid(format!("no location {id}")))
    }

    fn function(&self, id: u64) -> Result<&'a proto::Function, PprofError> {
        self.functions.get(&id).copied().ok_or_else(|| invalid(format!("no function {id}")))
    }

    fn module(&self, mapping_id: u64) -> Result<&'a str, PprofError> {
        if mapping_id == 0 {
            return Ok(crate::stacks::UNKNOWN_FRAME);
        }
        let mapping = self
            .mappings
            .get(&mapping_id)
            .ok_or_else(|| invalid(format!("no mapping {mapping_id}")))?;
        // Mappings name the module's path; frames name its file.
        let path = self.string(mapping.filename)?;
        Ok(path.rsplit('/').next().unwrap_or(path))
    }

    /// The modules the mappings describe, by file name.
    fn modules(&self) -> Result<BTreeMap<String, ModuleInfo>, PprofError> {
        let mut modules = BTreeMap::new();
        // In the file's order: the first mapping of a file gives its path.
        let mut mappings: Vec<&proto::Mapping> = self.mappings.values().copied().collect();
        mappings.sort_by_key(|mapping| mapping.id);
        for mapping in mappings {
            let path = self.string(mapping.filename)?;
            let Some(name) = path.rsplit('/').next().filter(|_| path.contains('/')) else {
                continue;
            };
            let build_id = match self.string(mapping.build_id)? {
                "" => None,
                id => Some(id.to_string()),
            };
            let info = ModuleInfo {
                path: path.to_string(),
                build_id,
                start: mapping.memory_start,
                end: mapping.memory_limit,
                file_offset: mapping.file_offset,
            };
            // Mapped again (a profile of several processes): as `of_processes` joins it.
            modules
                .entry(name.to_string())
                .and_modify(|kept: &mut ModuleInfo| kept.join_place(&info))
                .or_insert(info);
        }
        Ok(modules)
    }
}

fn invalid(what: String) -> PprofError {
    PprofError::Invalid(what)
}

fn from_proto(decoded: &proto::Profile) -> Result<SavedProfile, PprofError> {
    let tables = Tables::new(decoded)?;
    let comments: Vec<&str> =
        decoded.comment.iter().map(|&index| tables.string(index)).collect::<Result<_, _>>()?;
    let comment = |key: &str| {
        comments.iter().find_map(|comment| comment.strip_prefix(key)?.strip_prefix(": "))
    };
    let tracer_version = comment("tracer").ok_or(PprofError::Foreign)?;
    let kind = comment("kind")
        .and_then(parse_profile_kind)
        .ok_or_else(|| invalid("no \"kind:\" comment".to_string()))?;
    let pid = comment("pid")
        .and_then(|pid| pid.parse().ok())
        .ok_or_else(|| invalid("no \"pid:\" comment".to_string()))?;
    let min_wait_ns =
        comment("min wait").and_then(|text| text.strip_suffix("ns")?.parse().ok()).unwrap_or(0);
    let main_module = comment("main module");

    let sample_types: Vec<&str> = decoded
        .sample_type
        .iter()
        .map(|value_type| tables.string(value_type.r#type))
        .collect::<Result<_, _>>()?;
    if sample_types != [count_type(kind), "blocked"] {
        return Err(invalid(format!(
            "sample types {sample_types:?} are not a tracer {}'s",
            kind_name(kind)
        )));
    }
    let stacks = decoded
        .sample
        .iter()
        .enumerate()
        .map(|(index, sample)| {
            read_sample(&tables, kind, main_module, sample).map_err(|err| match err {
                PprofError::Invalid(what) => invalid(format!("sample {index}: {what}")),
                other => other,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_totals(&stacks).map_err(invalid)?;

    let mut counts = TraceCounts::default();
    let mut thread_counts = ThreadCounts::default();
    let mut below_threshold = Vec::new();
    let mut endpoint_states = BTreeMap::new();
    let mut thread_names = BTreeMap::new();
    for comment in &comments {
        let Some((key, value)) = comment.split_once(": ") else {
            continue;
        };
        match key {
            "lost" | "seen" => read_pairs(value, counts.fields_mut()),
            "threads read" => read_pairs(value, thread_counts.fields_mut()),
            "under the threshold" => {
                for entry in value.split(", ") {
                    let (kind, pairs) = entry.split_once(' ').unwrap_or((entry, ""));
                    let mut totals = ShortWaitTotals::default();
                    read_pairs(
                        pairs,
                        [("waits", &mut totals.count), ("total_ns", &mut totals.total_ns)],
                    );
                    if let Some(kind) = parse_wait_kind(kind) {
                        below_threshold.push((kind, totals));
                    }
                }
            }
            "endpoint state" => {
                if let Some((endpoint, state)) = value.split_once(" = ") {
                    endpoint_states.insert(endpoint.to_string(), state.to_string());
                }
            }
            "thread names" => {
                for entry in split_shell_words(value) {
                    if let Some((tid, name)) = entry.split_once('=')
                        && let Ok(tid) = tid.parse::<u32>()
                    {
                        thread_names.insert(tid, name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    let command_line = comment("command line").map(split_shell_words);
    let comm = comment("comm").unwrap_or_default().to_string();
    let mut profile = Profile::new(kind, pid, comm);
    profile.start_unix_ns = u64::try_from(decoded.time_nanos).ok().filter(|&start| start > 0);
    profile.command_line = command_line.clone();
    profile.duration = Duration::from_nanos(decoded.duration_nanos.max(0) as u64);
    profile.min_wait = Duration::from_nanos(min_wait_ns);
    profile.sampling = comment("sample period")
        .and_then(|text| text.strip_suffix("ns")?.parse().ok())
        .map(|period_ns| crate::model::Sampling {
            period: Duration::from_nanos(period_ns),
            reads: comment("sample reads").and_then(|text| text.parse().ok()).unwrap_or(0),
        });
    profile.no_wakers = comment("wakers") == Some("not recorded");
    profile.target_exited = comment("target exited") == Some("true");
    profile.cgroup = comment("cgroup").map(str::to_string);
    profile.python = comment("python").map(|version| {
        let mut python = crate::model::PythonInfo {
            version: version.to_string(),
            missing: comment("python missing").map(str::to_string),
            unreadable_frames: 0,
            truncated_stacks: 0,
        };
        read_pairs(
            comment("python frames lost").unwrap_or_default(),
            [
                ("unreadable_frames", &mut python.unreadable_frames),
                ("truncated_stacks", &mut python.truncated_stacks),
            ],
        );
        python
    });
    // The processes of a profile of several, from its samples' labels.
    let processes: BTreeSet<ProcessTag> =
        stacks.iter().filter_map(|stack: &ProfileStack| stack.process.clone()).collect();
    profile.processes = processes.into_iter().collect();
    profile.stacks = stacks;
    profile.below_threshold = below_threshold;
    profile.counts = counts;
    profile.thread_counts = thread_counts;
    profile.endpoint_states = endpoint_states;
    profile.thread_names = thread_names;
    // Who woke whom is not in the pprof file (it has no place for it).
    profile.modules = tables.modules()?;
    let provenance = Provenance {
        tracer_version: tracer_version.to_string(),
        kernel: comment("kernel").map(str::to_string),
        command_line,
    };
    // Said by `tracer report`: the table it prints of this file has no such sections.
    let mut left_out = Vec::new();
    if profile.counts.wakes_seen > 0 {
        left_out.push("who woke whom");
    }
    let chain_key = |label: &proto::Label| tables.string(label.key).is_ok_and(|key| key == "chain");
    if decoded.sample.iter().any(|sample| sample.label.iter().any(chain_key)) {
        left_out.push("the wait chains");
    }
    let not_kept: Vec<&str> = comment("not kept").map_or(Vec::new(), |t| t.split(' ').collect());
    if not_kept.contains(&NOT_KEPT_TIMELINE) {
        left_out.push("the timeline (the SVG's chart by second)");
    }
    if not_kept.contains(&NOT_KEPT_HISTOGRAMS) {
        left_out.push("the waits' histograms of lengths");
    }
    if not_kept.contains(&NOT_KEPT_BACKED_UP) {
        left_out.push("the backed-up sockets (in the file's comments)");
    }
    Ok(SavedProfile { profile, provenance, left_out })
}

/// Sets each named field from `name=value` pairs; unknown names are ignored.
fn read_pairs<'a>(text: &str, fields: impl IntoIterator<Item = (&'static str, &'a mut u64)>) {
    let values: HashMap<&str, u64> = text
        .split(' ')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name, value.parse().ok()?))
        })
        .collect();
    for (name, field) in fields {
        if let Some(&value) = values.get(name) {
            *field = value;
        }
    }
}

fn read_sample(
    tables: &Tables<'_>,
    kind: ProfileKind,
    main_module: Option<&str>,
    sample: &proto::Sample,
) -> Result<ProfileStack, PprofError> {
    let [count, total_ns] = sample.value[..] else {
        return Err(invalid(format!("{} values, not 2", sample.value.len())));
    };
    let (Ok(count), Ok(total_ns)) = (u64::try_from(count), u64::try_from(total_ns)) else {
        return Err(invalid("negative value".to_string()));
    };
    let mut frames = Vec::new();
    // Root first; within a location, the containing function first.
    for &location_id in sample.location_id.iter().rev() {
        let location = tables.location(location_id)?;
        let module = tables.module(location.mapping_id)?;
        let mut first = true;
        for line in location.line.iter().rev() {
            let function = tables.function(line.function_id)?;
            if tables.string(function.system_name)? == SYNTHETIC {
                continue;
            }
            let file = tables.string(function.filename)?;
            // A Python frame's whole name (with its line) is its system name.
            let name = if module == PYTHON_MODULE { function.system_name } else { function.name };
            frames.push(Frame {
                name: tables.string(name)?.to_string(),
                module: module.to_string(),
                module_is_main: main_module == Some(module),
                file: (!file.is_empty()).then(|| file.to_string()),
                line: u32::try_from(line.line).ok().filter(|&line| line > 0),
                inlined: !first,
                address: location.address,
            });
            first = false;
        }
    }
    let mut wait_kind = None;
    let mut object = None;
    let mut cgroup = None;
    let (mut pid, mut comm) = (None, None);
    let mut flags = BTreeSet::new();
    let mut stats = WaitStats { total_ns, ..WaitStats::default() };
    for label in &sample.label {
        let key = tables.string(label.key)?;
        let value = tables.string(label.str)?;
        let num = u64::try_from(label.num).map_err(|_| invalid(format!("negative {key}")))?;
        match key {
            "wait_kind" => {
                wait_kind = Some(
                    parse_wait_kind(value)
                        .ok_or_else(|| invalid(format!("unknown wait kind {value:?}")))?,
                );
            }
            "object" => object = Some(value.to_string()),
            "pid" => {
                pid = Some(u32::try_from(num).map_err(|_| invalid(format!("pid {num}")))?);
            }
            "comm" => comm = Some(value.to_string()),
            "cgroup" => cgroup = Some(value.to_string()),
            "still_blocked" | "truncated" | "lower_bound" if value == "true" => {
                flags.insert(key);
            }
            "tid" => {
                stats.threads.insert(num);
            }
            "shortest_wait" => stats.min_ns = num,
            "longest_wait" => stats.max_ns = num,
            _ => {}
        }
    }
    let kind_of_wait = wait_kind.ok_or_else(|| invalid("no wait_kind label".to_string()))?;
    stats.waits = count;
    stats.lower_bound = flags.contains("lower_bound");
    if stats.min_ns > stats.max_ns {
        return Err(invalid("shortest_wait is over longest_wait".to_string()));
    }
    Ok(ProfileStack {
        frames,
        kind: kind_of_wait,
        object,
        truncated: flags.contains("truncated"),
        in_progress: kind == ProfileKind::Snapshot || flags.contains("still_blocked"),
        stats,
        process: pid.zip(comm).map(|(pid, comm)| ProcessTag { pid, comm, cgroup }),
    })
}

#[cfg(test)]
mod tests {
    use tracer_common::WaitKind;

    use super::*;
    use crate::report::{
        fixtures::{fixture_profile, fixture_provenance},
        folded::folded_lines,
        json::to_json,
    };

    fn encode(profile: &Profile) -> Vec<u8> {
        let mut bytes = Vec::new();
        write_pprof(profile, &fixture_provenance(), Weight::Time, &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn inlined_frames_share_a_location_innermost_first() {
        let profile = fixture_profile();
        let decoded = build(&profile, &fixture_provenance(), Weight::Time);
        let name = |function_id: u64| {
            let function = &decoded.function[function_id as usize - 1];
            decoded.string_table[function.name as usize].as_str()
        };
        let inlined = decoded
            .location
            .iter()
            .find(|location| location.line.len() > 1)
            .expect("a location with inlined frames");
        let names: Vec<&str> = inlined.line.iter().map(|line| name(line.function_id)).collect();
        assert_eq!(
            names,
            ["std::sync::mpmc::array::Channel<T>::send", "app::send_stat"],
            "innermost first, the containing function last"
        );
        assert_eq!(decoded.string_table[decoded.mapping[0].filename as usize], "/srv/app");
        assert_eq!(decoded.string_table[decoded.mapping[0].build_id as usize], "0123456789abcdef");
        let main = &decoded.mapping[0];
        assert_eq!(
            (main.memory_start, main.memory_limit, main.file_offset),
            (0x5500_0000_0000, 0x5500_0010_0000, 0x1000),
            "the range and the file offset mapped at its start"
        );
        let leaf = decoded.sample[1].location_id[0];
        assert_eq!(
            name(decoded.location[leaf as usize - 1].line[0].function_id),
            "[futex app::STATS]"
        );
    }

    #[test]
    fn each_process_of_several_has_its_own_mapping_of_a_library() {
        // libc at a different place in each process: each sample's libc frame is in its
        // own process's mapping, with that process's range and file offset.
        let process = |pid: u32, libc_start: u64| {
            let mut profile = fixture_profile();
            profile.pid = pid;
            profile.modules.insert(
                "libc.so.6".to_string(),
                ModuleInfo {
                    path: "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
                    build_id: None,
                    start: libc_start,
                    end: libc_start + 0x10_0000,
                    file_offset: 0x28000,
                },
            );
            for stack in &mut profile.stacks {
                for frame in stack.frames.iter_mut().filter(|f| f.module == "libc.so.6") {
                    frame.address = libc_start + 0x100;
                }
            }
            profile
        };
        let merged = Profile::of_processes(vec![process(1, 0x7f00_0000), process(2, 0x7e00_0000)]);
        let libc_ranges = |profile: &Profile| {
            let decoded = build(profile, &fixture_provenance(), Weight::Time);
            let mut ranges: Vec<(u64, u64)> = decoded
                .location
                .iter()
                .filter(|location| [0x7e00_0100, 0x7f00_0100].contains(&location.address))
                .map(|location| {
                    let mapping = &decoded.mapping[location.mapping_id as usize - 1];
                    assert_eq!(mapping.file_offset, 0x28000);
                    (location.address, mapping.memory_start)
                })
                .collect();
            ranges.sort_unstable();
            ranges.dedup();
            ranges
        };
        let each_its_own = [(0x7e00_0100, 0x7e00_0000), (0x7f00_0100, 0x7f00_0000)];
        assert_eq!(libc_ranges(&merged), each_its_own);
        // Written as JSON and turned into pprof by `tracer report`: the same mappings
        // (JSON kept only the joined modules, without a range).
        let mut json = Vec::new();
        crate::report::json::write_json(&merged, &fixture_provenance(), &mut json).unwrap();
        let read_back = crate::report::json::read_json(&json).unwrap().profile;
        assert_eq!(libc_ranges(&read_back), each_its_own);
    }

    #[test]
    fn names_the_process_chose_cannot_drive_a_terminal_that_prints_the_profile() {
        let mut profile = fixture_profile();
        let hostile = "p\x1b]0;T\x07\n";
        profile.command_line = Some(vec!["app".to_string(), hostile.to_string()]);
        let tid = *profile.stacks[0].stats.threads.iter().next().expect("a thread");
        profile.thread_names.insert(tid as u32, hostile.to_string());
        let decoded = build(&profile, &fixture_provenance(), Weight::Time);
        for string in &decoded.string_table {
            assert!(!string.chars().any(char::is_control), "{string:?}");
        }
        assert!(decoded.string_table.iter().any(|s| s.contains(r"p\x1b]0;T\x07\x0a")));
    }

    #[test]
    fn what_pprof_has_no_place_for_is_named_when_read_back() {
        let mut profile = fixture_profile();
        assert!(!profile.chains.is_empty(), "the fixture has chains");
        profile.counts.wakes_seen = 3;
        profile.timeline = Some(crate::model::Timeline::default());
        let saved = read_pprof(&encode(&profile)).unwrap();
        assert_eq!(
            saved.left_out,
            [
                "who woke whom",
                "the wait chains",
                "the timeline (the SVG's chart by second)",
                "the waits' histograms of lengths",
                "the backed-up sockets (in the file's comments)"
            ]
        );
        // Each backed-up socket is a comment of its own, for pprof's header.
        let decoded = build(&profile, &fixture_provenance(), Weight::Time);
        let comments: Vec<&str> = decoded
            .comment
            .iter()
            .map(|&index| decoded.string_table[index as usize].as_str())
            .collect();
        assert!(
            comments.contains(
                &"backed up: unsent 10.0.0.7:51234 fd 9, 2.5 MiB queued: peer stopped reading \
                  (window closed), idle 8.10s"
            ),
            "{comments:#?}"
        );
        profile.counts.wakes_seen = 0;
        profile.chains.clear();
        profile.backed_up = Default::default();
        profile.timeline = None;
        for stack in &mut profile.stacks {
            stack.stats.log2_histogram.clear();
        }
        assert!(read_pprof(&encode(&profile)).unwrap().left_out.is_empty());
    }

    #[test]
    fn a_chain_label_goes_to_the_stacks_waiting_at_its_sites_only() {
        // The lockers of a mutex and a goroutine in a select at the same call site: only
        // the lockers' stack is in the chain.
        let mut profile = fixture_profile();
        let goroutines = |object: &str| ProfileStack {
            kind: WaitKind::Goroutine,
            object: Some(object.to_owned()),
            ..profile.stacks[0].clone()
        };
        let (lockers, selecting) = (goroutines("sync.Mutex.Lock on main.mu"), goroutines("select"));
        profile.chains = vec![chains::WaitChain {
            process: None,
            start: chains::ChainSite {
                site: lockers.call_site().to_owned(),
                kind: WaitKind::Goroutine,
                object: lockers.object.clone(),
            },
            threads: 2,
            blocked_ns: 0,
            hops: Vec::new(),
            terminal: chains::Terminal::Unknown("no holder found".to_owned()),
        }];
        profile.stacks = vec![lockers, selecting];
        let decoded = build(&profile, &fixture_provenance(), Weight::Time);
        let has_chain = |sample: &proto::Sample| {
            sample.label.iter().any(|label| decoded.string_table[label.key as usize] == "chain")
        };
        let labelled: Vec<bool> = decoded.sample.iter().map(has_chain).collect();
        assert_eq!(labelled, [true, false]);
    }

    #[test]
    fn samples_carry_kind_object_thread_and_still_blocked_labels() {
        let profile = fixture_profile();
        let decoded = build(&profile, &fixture_provenance(), Weight::Time);
        let string = |index: i64| decoded.string_table[index as usize].as_str();
        let labels = |sample: &proto::Sample| -> Vec<String> {
            sample
                .label
                .iter()
                .filter(|label| label.str != 0)
                .map(|label| format!("{}={}", string(label.key), string(label.str)))
                .collect()
        };
        let stuck = decoded
            .sample
            .iter()
            .find(|sample| labels(sample).contains(&"still_blocked=true".to_string()))
            .expect("a still-blocked sample");
        assert_eq!(
            labels(stuck),
            [
                "wait_kind=send",
                "object=10.0.0.5:80",
                "still_blocked=true",
                "lower_bound=true",
                "thread=reporter",
                "chain=1 thread at app::write_to_backend [send 10.0.0.5:80: send buffer full \
                 (4608/4608 bytes), peer window zero] → peer pid 5151 (stats-backend): blocked \
                 in clock_nanosleep at backend::drain; none of its threads waits on this \
                 connection",
            ]
        );
        assert!(
            decoded
                .comment
                .iter()
                .any(|&index| string(index).starts_with("lost: ring_buffer_full=0"))
        );
        assert_eq!(string(decoded.default_sample_type), "blocked");
    }

    #[test]
    fn a_profile_survives_the_round_trip() {
        let mut profile = fixture_profile();
        // pprof has no place for wakers, chains (beyond a label), per-stack duration
        // histograms or backed-up sockets (beyond comments).
        profile.backed_up = Default::default();
        profile.wakers.clear();
        profile.chains.clear();
        for stack in &mut profile.stacks {
            stack.stats.log2_histogram.clear();
        }
        profile.no_wakers = true;
        profile.counts.peer_lookups_failed = 2;
        profile.counts.waits_unnamed = 3;
        profile.cgroup = Some("/system.slice/app.service".to_string());
        profile.python = Some(crate::model::PythonInfo {
            version: "3.12".to_string(),
            missing: Some("2 waits ended before their frames were read".to_string()),
            unreadable_frames: 3,
            truncated_stacks: 1,
        });
        let saved = read_pprof(&encode(&profile)).unwrap();
        assert_eq!(folded_lines(&saved.profile), folded_lines(&profile));
        let json = |profile: &Profile, provenance: &Provenance| {
            serde_json::to_string_pretty(&to_json(profile, provenance)).unwrap()
        };
        assert_eq!(json(&saved.profile, &saved.provenance), json(&profile, &fixture_provenance()));
    }

    #[test]
    fn command_lines_split_back_into_their_arguments() {
        let args: Vec<String> =
            ["./app", "--name", "two words", "it's", ""].iter().map(|s| s.to_string()).collect();
        assert_eq!(shell_words(&args), r"./app --name 'two words' 'it'\''s' ''");
        assert_eq!(split_shell_words(&shell_words(&args)), args);
    }

    #[test]
    fn foreign_and_broken_files_say_why() {
        let message = |bytes: &[u8]| read_pprof(bytes).unwrap_err().to_string();
        let bytes = encode(&fixture_profile());
        assert_eq!(message(&bytes[..bytes.len() / 2]), "truncated or corrupt gzip data");
        let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
        gzip.write_all(&proto::Profile::default().encode_to_vec()).unwrap();
        assert_eq!(
            message(&gzip.finish().unwrap()),
            "a pprof profile not written by tracer (no \"tracer:\" comment)"
        );
        let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
        gzip.write_all(b"\xff\xff\xff").unwrap();
        assert_eq!(message(&gzip.finish().unwrap()), "not a pprof profile");
    }
}
