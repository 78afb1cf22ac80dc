//! `/metrics`: the waits as Prometheus series (by wait kind, call site and object, with a
//! cap on how many), and the tracer's own health: events, losses, CPU and memory.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    hash::Hasher as _,
    sync::atomic::AtomicU64,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    model::{Backlog, ProcessTag, Profile},
    pipeline::own_usage::ProcessUsage,
};

/// The `site` of the series that a full table folds into.
pub const OTHER_SITE: &str = "other";

/// Distinct folded label sets remembered (as hashes) to report how many were folded;
/// past this the count stops growing (it is then a lower bound).
const MAX_FOLDED_REMEMBERED: usize = 100_000;

/// One series of the wait metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct SeriesLabels {
    /// futex, send, recv, connect, accept, poll, read or write (a pipe's).
    pub kind: String,
    /// The innermost frame in the program's own code.
    pub site: String,
    /// The endpoint or lock waited on; empty when there is nothing to name.
    pub object: String,
}

/// One series of the wait metrics of a daemon of several processes: the process, then
/// what `SeriesLabels` holds.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ProcessSeriesLabels {
    pub pid: String,
    pub comm: String,
    /// The process's cgroup (v2 path); empty when unknown.
    pub cgroup: String,
    /// The container id in the cgroup's name; empty outside containers.
    pub container: String,
    pub kind: String,
    pub site: String,
    pub object: String,
}

/// A label set a full table folds into another: its `site="other"` one.
pub trait Foldable: Clone + Eq + std::hash::Hash {
    fn folded(&self) -> Self;

    /// The same series with its object folded (`object="other"`), for label sets that
    /// name one: past `MAX_OBJECTS_PER_SITE` at a call site, its further objects go there.
    fn object_folded(&self) -> Option<Self> {
        None
    }
}

/// The most objects a call site's series name one by one (of each kind, and process):
/// a server's waits on its clients' connections name each client's address and port,
/// and one busy listener filled a host daemon's table, folding every other process's
/// later sites into `other`.
pub const MAX_OBJECTS_PER_SITE: usize = 16;

/// The object label of the series that holds a site's objects past `MAX_OBJECTS_PER_SITE`.
pub const OTHER_OBJECT: &str = "other";

/// The labels of a stack's series.
pub trait StackLabels: Foldable + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static {
    fn of(stack: &crate::model::ProfileStack) -> Self;
}

impl StackLabels for SeriesLabels {
    fn of(stack: &crate::model::ProfileStack) -> Self {
        Self {
            kind: stack.kind.name().to_string(),
            site: stack.call_site().to_string(),
            object: stack.object.clone().unwrap_or_default(),
        }
    }
}

impl Foldable for SeriesLabels {
    fn folded(&self) -> Self {
        Self { kind: self.kind.clone(), site: OTHER_SITE.to_string(), object: String::new() }
    }

    fn object_folded(&self) -> Option<Self> {
        Some(Self { object: OTHER_OBJECT.to_string(), ..self.clone() })
    }
}

impl StackLabels for ProcessSeriesLabels {
    fn of(stack: &crate::model::ProfileStack) -> Self {
        let SeriesLabels { kind, site, object } = SeriesLabels::of(stack);
        let [pid, comm, cgroup, container] = process_label_values(stack.process.as_ref());
        Self { pid, comm, cgroup, container, kind, site, object }
    }
}

impl Foldable for ProcessSeriesLabels {
    /// Into one `other` per kind over every process: a per-process one would let the
    /// series grow with the number of processes.
    fn folded(&self) -> Self {
        Self {
            pid: String::new(),
            comm: String::new(),
            cgroup: String::new(),
            container: String::new(),
            kind: self.kind.clone(),
            site: OTHER_SITE.to_string(),
            object: String::new(),
        }
    }

    fn object_folded(&self) -> Option<Self> {
        Some(Self { object: OTHER_OBJECT.to_string(), ..self.clone() })
    }
}

/// One series of `tracer_goroutines`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct GoroutineLabels {
    /// Go's wait reason: `chan send`, `IO wait`, `sync.Mutex.Lock`, …
    pub wait_reason: String,
    /// The innermost frame outside Go's standard library.
    pub site: String,
}

impl Foldable for GoroutineLabels {
    fn folded(&self) -> Self {
        Self { wait_reason: self.wait_reason.clone(), site: OTHER_SITE.to_string() }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitTotals {
    pub waits: u64,
    pub total_ns: u64,
}

/// How long a series must have gone without a wait before a full table drops it to make
/// room for a new label set: a server's waits on connections to clients name each
/// client's address and port, and connections long closed must not keep the table full
/// (folding every later call site into `other`) for the rest of the daemon's life.
pub const RETIRE_IDLE_SERIES_AFTER: Duration = Duration::from_secs(10 * 60);

/// Labelled series with at most `max_series` distinct label sets besides the
/// per-kind (per wait reason) `other` ones.
#[derive(Debug)]
pub struct CappedSeries<V, L = SeriesLabels> {
    pub max_series: usize,
    pub series: HashMap<L, V>,
    /// Series in `series` that are not a kind's `other`.
    own_series: usize,
    /// When each of those was last added to.
    touched: HashMap<L, Instant>,
    /// No series was touched before this (a bound kept so that a full table is not
    /// searched for an idle series at every new label set).
    touched_since: Option<Instant>,
    /// Series dropped for being idle while the table was full.
    retired: u64,
    /// Hashes of the label sets folded into `other` (a site's or an object's).
    folded: HashSet<u64>,
    /// How many objects each site's own series name, by the site's `object_folded` labels.
    objects_per_site: HashMap<L, usize>,
}

impl<V: Default, L: Foldable> CappedSeries<V, L> {
    pub fn new(max_series: usize) -> Self {
        Self {
            max_series,
            series: HashMap::new(),
            own_series: 0,
            touched: HashMap::new(),
            touched_since: None,
            retired: 0,
            folded: HashSet::new(),
            objects_per_site: HashMap::new(),
        }
    }

    /// The value of `labels`, or of its kind's `other` series when the table is full.
    pub fn entry(&mut self, labels: L) -> &mut V {
        self.entry_at(labels, Instant::now())
    }

    /// `entry`, at `now`: a full table first drops its longest idle series if no wait
    /// came to it for `RETIRE_IDLE_SERIES_AFTER`.
    fn entry_at(&mut self, labels: L, now: Instant) -> &mut V {
        if self.series.contains_key(&labels) {
            if let Some(touched) = self.touched.get_mut(&labels) {
                *touched = now;
            }
            return self.series.entry(labels).or_default();
        }
        // A site's objects past the most it names go to its `object="other"` series, once
        // none of those it names is idle long enough to give its place up (the clients of
        // a listener come and go: the first 16 must not keep the names for good).
        let site = labels.object_folded().filter(|site| *site != labels);
        if let Some(site) = &site
            && self.objects_per_site.get(site).is_some_and(|&n| n >= MAX_OBJECTS_PER_SITE)
            && !self.retire_idle_object(site, now)
        {
            self.note_folded(&labels);
            return self.entry_at(site.clone(), now);
        }
        if self.own_series >= self.max_series {
            self.retire_idle(now);
        }
        if self.own_series < self.max_series {
            self.own_series += 1;
            self.touched.insert(labels.clone(), now);
            self.touched_since.get_or_insert(now);
            if let Some(site) = site {
                *self.objects_per_site.entry(site).or_default() += 1;
            }
            return self.series.entry(labels).or_default();
        }
        self.note_folded(&labels);
        self.series.entry(labels.folded()).or_default()
    }

    fn note_folded(&mut self, labels: &L) {
        if self.folded.len() < MAX_FOLDED_REMEMBERED {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            labels.hash(&mut hasher);
            self.folded.insert(hasher.finish());
        }
    }

    /// Drops the series of `site` (an `object_folded` label set) idle longest, if it has
    /// been idle long enough; whether one was.
    fn retire_idle_object(&mut self, site: &L, now: Instant) -> bool {
        let idlest = self
            .touched
            .iter()
            .filter(|(labels, _)| labels.object_folded().as_ref() == Some(site) && *labels != site)
            .min_by_key(|(_, touched)| **touched)
            .map(|(labels, touched)| (labels.clone(), *touched));
        let Some((idlest, touched)) = idlest else { return false };
        if now.duration_since(touched) < RETIRE_IDLE_SERIES_AFTER {
            return false;
        }
        self.retire(&idlest);
        true
    }

    /// One object fewer at `labels`' site: its series was dropped.
    fn forget_object(&mut self, labels: &L) {
        let Some(site) = labels.object_folded().filter(|site| site != labels) else { return };
        if let Some(objects) = self.objects_per_site.get_mut(&site) {
            *objects = objects.saturating_sub(1);
            if *objects == 0 {
                self.objects_per_site.remove(&site);
            }
        }
    }

    /// Drops the series idle longest if it has been idle long enough.
    fn retire_idle(&mut self, now: Instant) {
        let idle_enough =
            |touched: Instant| now.duration_since(touched) >= RETIRE_IDLE_SERIES_AFTER;
        if !self.touched_since.is_some_and(idle_enough) {
            return;
        }
        let Some((idlest, touched)) =
            self.touched.iter().min_by_key(|(_, touched)| **touched).map(|(l, t)| (l.clone(), *t))
        else {
            return;
        };
        if !idle_enough(touched) {
            self.touched_since = Some(touched);
            return;
        }
        self.retire(&idlest);
    }

    /// Drops the own series `labels`, idle long enough: its place is free again.
    fn retire(&mut self, labels: &L) {
        self.touched.remove(labels);
        self.series.remove(labels);
        self.forget_object(labels);
        self.own_series -= 1;
        self.retired += 1;
    }

    /// Keeps the series `keep` picks and the `other` ones, dropping the rest (those of a
    /// process that exited): their places under the cap are free again.
    pub fn retain(&mut self, keep: impl Fn(&L) -> bool) {
        let before = self.series.len();
        let dropped: Vec<L> = self
            .series
            .keys()
            .filter(|labels| !keep(labels) && labels.folded() != **labels)
            .cloned()
            .collect();
        self.series.retain(|labels, _| keep(labels) || labels.folded() == *labels);
        self.touched.retain(|labels, _| keep(labels));
        self.own_series = self.own_series.saturating_sub(before - self.series.len());
        for labels in &dropped {
            self.forget_object(labels);
        }
    }

    /// How many distinct label sets were folded into `other`.
    pub fn folded(&self) -> usize {
        self.folded.len()
    }

    /// How many series were dropped for being idle while the table was full.
    pub fn retired(&self) -> u64 {
        self.retired
    }
}

/// The cumulative wait counters, folded in from each metrics window.
pub type WaitSeries<L = SeriesLabels> = CappedSeries<WaitTotals, L>;

impl<L: StackLabels> CappedSeries<WaitTotals, L> {
    /// Adds the waits of one symbolized window.
    pub fn fold(&mut self, window: &Profile) {
        for stack in &window.stacks {
            let totals = self.entry(L::of(stack));
            totals.waits += stack.stats.waits;
            totals.total_ns += stack.stats.total_ns;
        }
    }
}

/// The threads blocked now, per series.
pub fn blocked_series<L: StackLabels>(
    snapshot: &Profile,
    max_series: usize,
) -> CappedSeries<u64, L> {
    let mut series = CappedSeries::new(max_series);
    for stack in &snapshot.stacks {
        *series.entry(L::of(stack)) += stack.stats.threads.len() as u64;
    }
    series
}

/// The goroutines waiting now, per wait reason and call site: the dump's groups come
/// most goroutines first, so a full table keeps the biggest sites.
pub fn goroutine_series(
    dump: &crate::golang::GoroutineDump,
    max_series: usize,
) -> CappedSeries<u64, GoroutineLabels> {
    let mut series = CappedSeries::new(max_series);
    for (stack, group) in dump.iter() {
        let labels = GoroutineLabels {
            wait_reason: group.wait_reason.clone(),
            site: stack.call_site().to_string(),
        };
        *series.entry(labels) += group.goroutines.len() as u64;
    }
    series
}

/// What the tracer itself did and lost, over its whole run.
#[derive(Clone, Debug, Default)]
pub struct TracerTotals {
    /// Records read from the ring buffers.
    pub events: u64,
    /// Lost events by reason.
    pub lost: Vec<(&'static str, u64)>,
}

/// Everything one scrape shows.
pub struct Scrape<'a, L = SeriesLabels> {
    pub blocked: Option<&'a CappedSeries<u64, L>>,
    /// For a Go program: its goroutines waiting now.
    pub goroutines: Option<&'a CappedSeries<u64, GoroutineLabels>>,
    pub waits: &'a WaitSeries<L>,
    pub tracer: &'a TracerTotals,
    pub usage: ProcessUsage,
    /// For a daemon of several processes: how many it reads now.
    pub processes: Option<usize>,
    /// `--trigger`: how often each condition fired, by whether its files were written.
    pub firings: Option<&'a std::collections::BTreeMap<(String, &'static str), u64>>,
    /// Exact mode: the waits under --min-wait, summed by kind without stacks.
    pub short_waits: Option<&'a crate::probes::ShortWaitsByKind>,
    /// The sockets whose data stopped moving, as last read.
    pub backed_up: Option<&'a super::backed_up::BackedUpSeries>,
}

/// The OpenMetrics text of one scrape.
pub fn render<L: StackLabels>(scrape: &Scrape<'_, L>) -> Result<String, std::fmt::Error> {
    let Scrape {
        blocked,
        goroutines,
        waits,
        tracer,
        usage,
        processes,
        firings,
        short_waits,
        backed_up,
    } = scrape;
    let mut registry = Registry::default();

    let blocked_threads = Family::<L, Gauge>::default();
    registry.register(
        "tracer_blocked_threads",
        "Threads of the target blocked now in a futex, socket or pipe wait",
        blocked_threads.clone(),
    );
    if let Some(firings) = firings {
        let family = Family::<TriggerLabel, Counter>::default();
        registry.register(
            "tracer_trigger_firings",
            "Times a --trigger condition fired, by whether its files were written",
            family.clone(),
        );
        for ((trigger, result), &count) in firings.iter() {
            let labels = TriggerLabel { trigger: trigger.clone(), result: result.to_string() };
            family.get_or_create(&labels).inc_by(count);
        }
    }
    if let Some(processes) = processes {
        let gauge = Gauge::<i64>::default();
        registry.register("tracer_processes", "Processes the daemon reads now", gauge.clone());
        gauge.set(clamp_i64(*processes as u64));
    }
    let folded = Family::<MetricLabel, Gauge>::default();
    registry.register(
        "tracer_folded_series",
        "Label sets folded into site=\"other\" by the series cap, or into a site's \
         object=\"other\" past its 16 objects",
        folded.clone(),
    );
    if let Some(blocked) = blocked {
        for (labels, &threads) in &blocked.series {
            blocked_threads.get_or_create(labels).set(clamp_i64(threads));
        }
        folded
            .get_or_create(&MetricLabel { metric: "tracer_blocked_threads".into() })
            .set(clamp_i64(blocked.folded() as u64));
    }
    if let Some(goroutines) = goroutines {
        let family = Family::<GoroutineLabels, Gauge>::default();
        registry.register(
            "tracer_goroutines",
            "Goroutines of the target (a Go program) waiting now, by wait reason and call site",
            family.clone(),
        );
        for (labels, &count) in &goroutines.series {
            family.get_or_create(labels).set(clamp_i64(count));
        }
        folded
            .get_or_create(&MetricLabel { metric: "tracer_goroutines".into() })
            .set(clamp_i64(goroutines.folded() as u64));
    }

    let wait_seconds = Family::<L, Counter<f64, AtomicU64>>::default();
    registry.register(
        "tracer_wait_seconds",
        "Time the target's threads spent in waits that ended, over --min-wait",
        wait_seconds.clone(),
    );
    let wait_count = Family::<L, Counter>::default();
    registry.register(
        "tracer_waits",
        "Waits of the target that ended, over --min-wait",
        wait_count.clone(),
    );
    for (labels, totals) in &waits.series {
        wait_seconds.get_or_create(labels).inc_by(totals.total_ns as f64 / 1e9);
        wait_count.get_or_create(labels).inc_by(totals.waits);
    }
    folded
        .get_or_create(&MetricLabel { metric: "tracer_waits_total".into() })
        .set(clamp_i64(waits.folded() as u64));
    if let Some(short_waits) = short_waits {
        // Every wait under the threshold: in the kernel's sums by kind, not in the series
        // by call site (a futex ping-pong's handoffs are all here).
        let seconds = Family::<KindLabel, Counter<f64, AtomicU64>>::default();
        registry.register(
            "tracer_short_wait_seconds",
            "Time the target's threads spent in waits that ended under --min-wait, by kind \
             (no call site: no stack is taken for them)",
            seconds.clone(),
        );
        let count = Family::<KindLabel, Counter>::default();
        registry.register(
            "tracer_short_waits",
            "Waits of the target that ended under --min-wait, by kind",
            count.clone(),
        );
        for (kind, totals) in crate::pipeline::counts::below_threshold(short_waits) {
            let labels = KindLabel { kind: kind.name().to_string() };
            seconds.get_or_create(&labels).inc_by(totals.total_ns as f64 / 1e9);
            count.get_or_create(&labels).inc_by(totals.count);
        }
    }
    if let Some(backed_up) = backed_up {
        register_backed_up(&mut registry, backed_up);
    }
    let retired = Counter::<u64>::default();
    registry.register(
        "tracer_retired_series",
        "Wait series dropped from a full table after 10 minutes without a wait, to make room \
         for a new label set",
        retired.clone(),
    );
    retired.inc_by(waits.retired());

    let events = Counter::<u64>::default();
    registry.register(
        "tracer_events",
        "Records read from the probes' ring buffers (sampled: waits the reads saw end)",
        events.clone(),
    );
    events.inc_by(tracer.events);
    let lost = Family::<ReasonLabel, Counter>::default();
    registry.register("tracer_lost_events", "Events lost, by reason", lost.clone());
    for &(reason, count) in &tracer.lost {
        lost.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc_by(count);
    }
    let cpu = Counter::<f64, AtomicU64>::default();
    registry.register(
        "tracer_cpu_seconds",
        "CPU time the tracer used (user and system)",
        cpu.clone(),
    );
    cpu.inc_by(usage.cpu_seconds);
    let resident = Gauge::<i64>::default();
    registry.register(
        "tracer_resident_memory_bytes",
        "Resident memory of the tracer process",
        resident.clone(),
    );
    resident.set(clamp_i64(usage.resident_bytes));

    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

/// OpenMetrics text as Prometheus's text format 0.0.4: a counter's family is named with
/// its samples' `_total` (OpenMetrics names it without), and `# UNIT` and `# EOF`, which
/// 0.0.4 does not have, are left out.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let family = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, after) = rest.split_once(' ')?;
            counters.contains(name).then_some((prefix, name, after))
        });
        match family {
            Some((prefix, name, after)) => {
                let _ = writeln!(text, "{prefix}{name}_total {after}");
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

/// The backed-up sockets' gauges: by way alone for the one process of `serve --pid`, by
/// process and way for a daemon of several.
fn register_backed_up(registry: &mut Registry, backed_up: &super::backed_up::BackedUpSeries) {
    let unreadable = Gauge::<i64>::default();
    registry.register(
        "tracer_backed_up_unreadable_processes",
        "Processes whose sockets could not all be read for backed-up ones at the last read",
        unreadable.clone(),
    );
    unreadable.set(clamp_i64(backed_up.unreadable));
    let stopped = (
        "tracer_backed_up_sockets",
        "Sockets whose data stopped moving (unsent: the peer takes nothing, as its window is \
         closed or nothing is acknowledged, or a Unix socket's buffer is full at two looks, \
         its reader slow or stopped; unread: the process does not read), read every 5 s",
        "tracer_backed_up_bytes",
        "Bytes queued in the backed-up sockets, by the same labels",
    );
    let slow = (
        "tracer_slow_reader_sockets",
        "TCP connections whose data still moves, held back by the peer's window at least half \
         the time between two looks 100 ms apart (the peer reads slower than the process \
         writes), read every 5 s",
        "tracer_slow_reader_bytes",
        "Bytes queued in the slow readers' connections, by the same labels",
    );
    let awaiting = (
        "tracer_awaiting_reply_sockets",
        "TCP connections the process made whose request waits for its reply: its last data \
         went out a second ago or more, all of it acknowledged, and nothing came back since \
         (where an event-driven client waits on a slow server), read every 5 s",
        "",
        "",
    );
    let several = [&backed_up.series, &backed_up.slow_readers, &backed_up.awaiting]
        .iter()
        .any(|series| series.keys().any(|(process, _)| process.is_some()));
    for (names, series) in [
        (stopped, &backed_up.series),
        (slow, &backed_up.slow_readers),
        (awaiting, &backed_up.awaiting),
    ] {
        if several {
            let labelled = series.iter().map(|((process, way), &counts)| {
                (ProcessWayLabels::of(process.as_ref(), *way), counts)
            });
            register_backed_up_series(registry, names, labelled);
        } else {
            let labelled = series
                .iter()
                .map(|((_, way), &counts)| (WayLabel { way: way.name().to_string() }, counts));
            register_backed_up_series(registry, names, labelled);
        }
    }
}

/// A gauge of sockets and one of their bytes: (name, help) of each; no gauge of bytes
/// where its name is empty.
type GaugeNames = (&'static str, &'static str, &'static str, &'static str);

fn register_backed_up_series<L>(
    registry: &mut Registry,
    (sockets_name, sockets_help, bytes_name, bytes_help): GaugeNames,
    series: impl Iterator<Item = (L, (u64, u64))>,
) where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let sockets = Family::<L, Gauge>::default();
    registry.register(sockets_name, sockets_help, sockets.clone());
    let bytes = Family::<L, Gauge>::default();
    if !bytes_name.is_empty() {
        registry.register(bytes_name, bytes_help, bytes.clone());
    }
    for (labels, (count, queued)) in series {
        sockets.get_or_create(&labels).set(clamp_i64(count));
        bytes.get_or_create(&labels).set(clamp_i64(queued));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WayLabel {
    /// `unsent`, `unread` or `awaiting`.
    way: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessWayLabels {
    pid: String,
    comm: String,
    cgroup: String,
    container: String,
    way: String,
}

impl ProcessWayLabels {
    fn of(process: Option<&ProcessTag>, way: Backlog) -> Self {
        let [pid, comm, cgroup, container] = process_label_values(process);
        Self { pid, comm, cgroup, container, way: way.name().to_string() }
    }
}

/// A process's `pid`, `comm`, `cgroup` and `container` labels (empty where unknown).
fn process_label_values(process: Option<&ProcessTag>) -> [String; 4] {
    let Some(process) = process else { return Default::default() };
    [
        process.pid.to_string(),
        process.comm.clone(),
        process.cgroup.clone().unwrap_or_default(),
        process.container_id().unwrap_or_default().to_string(),
    ]
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricLabel {
    metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabel {
    trigger: String,
    /// `written`, or `failed` (the files could not be written; the log says why).
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(site: &str) -> SeriesLabels {
        SeriesLabels { kind: "futex".into(), site: site.into(), object: String::new() }
    }

    #[test]
    fn series_past_the_cap_fold_into_other_and_are_counted() {
        let mut series = CappedSeries::<u64>::new(2);
        *series.entry(labels("a")) += 1;
        *series.entry(labels("b")) += 1;
        *series.entry(labels("c")) += 1;
        *series.entry(labels("d")) += 1;
        *series.entry(labels("c")) += 1;
        // Known series keep counting once the table is full.
        *series.entry(labels("a")) += 1;
        assert_eq!(series.series[&labels("a")], 2);
        assert_eq!(series.series[&labels(OTHER_SITE)], 3);
        assert!(!series.series.contains_key(&labels("c")));
        assert_eq!(series.folded(), 2);
        assert_eq!(series.series.len(), 3);
    }

    /// A listener's waits on 40 clients' connections: the first 16 named, the rest in its
    /// `object="other"`, which leaves the table room for other sites; a dropped object's
    /// place at its site is free again.
    #[test]
    fn a_sites_objects_past_the_most_fold_into_its_other_object() {
        let on = |site: &str, object: String| SeriesLabels {
            kind: "recv".into(),
            site: site.into(),
            object,
        };
        let start = Instant::now();
        let mut series = CappedSeries::<u64>::new(100);
        for port in 0..40 {
            *series.entry_at(on("serve", format!("10.0.0.9:{}", 40_000 + port)), start) += 1;
        }
        let other = on("serve", OTHER_OBJECT.to_string());
        assert_eq!(series.series[&other], 40 - MAX_OBJECTS_PER_SITE as u64);
        assert_eq!(series.series.len(), MAX_OBJECTS_PER_SITE + 1);
        assert_eq!(series.folded(), 40 - MAX_OBJECTS_PER_SITE);
        *series.entry_at(on("fetch", "10.0.0.5:80".into()), start) += 1;
        assert_eq!(series.series[&on("fetch", "10.0.0.5:80".into())], 1);
        // The first client gone from the table: a new one is named again.
        series.retain(|labels| labels.object != "10.0.0.9:40000");
        *series.entry_at(on("serve", "10.0.0.9:50000".into()), start) += 1;
        assert_eq!(series.series[&on("serve", "10.0.0.9:50000".into())], 1);
        assert_eq!(series.series[&other], 40 - MAX_OBJECTS_PER_SITE as u64);
        // Clients idle long enough give their names up to new ones, the table not full.
        let later = start + RETIRE_IDLE_SERIES_AFTER;
        *series.entry_at(on("serve", "10.0.0.9:50000".into()), later) += 1;
        *series.entry_at(on("serve", "10.0.0.9:60000".into()), later) += 1;
        assert_eq!(series.series[&on("serve", "10.0.0.9:60000".into())], 1);
        assert_eq!(series.series[&on("serve", "10.0.0.9:50000".into())], 2);
        assert_eq!(series.retired(), 1);
        assert_eq!(series.series.len(), MAX_OBJECTS_PER_SITE + 2);
    }

    #[test]
    fn a_full_table_makes_room_by_dropping_a_series_idle_for_long() {
        let start = Instant::now();
        let mut series = CappedSeries::<u64>::new(2);
        *series.entry_at(labels("a"), start) += 1;
        *series.entry_at(labels("b"), start) += 1;
        // Both still recent: a new site folds into other.
        let soon = start + RETIRE_IDLE_SERIES_AFTER / 2;
        *series.entry_at(labels("a"), soon) += 1;
        *series.entry_at(labels("c"), soon) += 1;
        assert_eq!(series.series[&labels(OTHER_SITE)], 1);
        assert_eq!(series.retired(), 0);
        // b, idle since the start, gives its place to d; a, added to since, stays.
        let later = start + RETIRE_IDLE_SERIES_AFTER;
        *series.entry_at(labels("d"), later) += 1;
        assert_eq!(series.retired(), 1);
        assert!(!series.series.contains_key(&labels("b")));
        assert_eq!(series.series[&labels("a")], 2);
        assert_eq!(series.series[&labels("d")], 1);
        // a was added to at `soon`: not idle long enough yet, so e folds.
        *series.entry_at(labels("e"), later) += 1;
        assert_eq!(series.series[&labels(OTHER_SITE)], 2);
        assert_eq!(series.folded(), 2);
        assert_eq!(series.retired(), 1);
        *series.entry_at(labels("e"), soon + RETIRE_IDLE_SERIES_AFTER) += 1;
        assert_eq!(series.retired(), 2);
        assert!(!series.series.contains_key(&labels("a")));
        assert_eq!(series.series[&labels("e")], 1);
    }

    #[test]
    fn goroutine_series_past_the_cap_fold_per_wait_reason() {
        let mut series = CappedSeries::<u64, GoroutineLabels>::new(1);
        let labels = |wait_reason: &str, site: &str| GoroutineLabels {
            wait_reason: wait_reason.into(),
            site: site.into(),
        };
        *series.entry(labels("chan send", "main.sendStat")) += 600_000;
        *series.entry(labels("chan send", "main.other")) += 2;
        *series.entry(labels("IO wait", "main.main")) += 1;
        assert_eq!(series.series[&labels("chan send", "main.sendStat")], 600_000);
        assert_eq!(series.series[&labels("chan send", OTHER_SITE)], 2);
        assert_eq!(series.series[&labels("IO wait", OTHER_SITE)], 1);
        assert_eq!(series.folded(), 2);
    }

    #[test]
    fn backed_up_sockets_of_several_processes_are_labelled_with_each() {
        let redis = ProcessTag { pid: 41, comm: "redis".to_string(), cgroup: None };
        let series = super::super::backed_up::BackedUpSeries {
            series: [((Some(redis.clone()), Backlog::Unread), (1, 4096))].into(),
            slow_readers: [((Some(redis.clone()), Backlog::Unsent), (3, 65536))].into(),
            awaiting: [((Some(redis), Backlog::Awaiting), (2, 0))].into(),
            unreadable: 2,
        };
        let mut registry = Registry::default();
        register_backed_up(&mut registry, &series);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            r#"tracer_backed_up_sockets{pid="41",comm="redis",cgroup="",container="",way="unread"} 1"#,
            r#"tracer_backed_up_bytes{pid="41",comm="redis",cgroup="",container="",way="unread"} 4096"#,
            r#"tracer_slow_reader_sockets{pid="41",comm="redis",cgroup="",container="",way="unsent"} 3"#,
            r#"tracer_slow_reader_bytes{pid="41",comm="redis",cgroup="",container="",way="unsent"} 65536"#,
            r#"tracer_awaiting_reply_sockets{pid="41",comm="redis",cgroup="",container="",way="awaiting"} 2"#,
            "tracer_backed_up_unreadable_processes 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        // Requests awaiting replies queue nothing: no gauge of their bytes.
        assert!(!text.contains("awaiting_reply_bytes"), "{text}");
    }

    #[test]
    fn render_names_the_series_with_their_labels() {
        let mut waits = WaitSeries::new(10);
        *waits.entry(labels("app::send_stat")) = WaitTotals { waits: 3, total_ns: 1_500_000_000 };
        let mut blocked = CappedSeries::<u64>::new(10);
        *blocked.entry(labels("app::send_stat")) = 32;
        let tracer = TracerTotals { events: 7, lost: vec![("ring_buffer_full", 2)] };
        let mut short_waits: crate::probes::ShortWaitsByKind = Default::default();
        short_waits[tracer_common::WaitKind::Futex as usize] =
            tracer_common::ShortWaitTotals { count: 9168, total_ns: 2_500_000_000 };
        let mut goroutines = CappedSeries::<u64, GoroutineLabels>::new(10);
        *goroutines.entry(GoroutineLabels {
            wait_reason: "chan send".into(),
            site: "main.sendStat".into(),
        }) = 600_000;
        let text = render(&Scrape {
            blocked: Some(&blocked),
            goroutines: Some(&goroutines),
            waits: &waits,
            tracer: &tracer,
            usage: ProcessUsage {
                cpu_seconds: 1.5,
                resident_bytes: 4096,
                peak_resident_bytes: 4096,
            },
            processes: None,
            firings: None,
            short_waits: Some(&short_waits),
            backed_up: Some(&super::super::backed_up::BackedUpSeries {
                series: [((None, Backlog::Unsent), (2, 5_242_880))].into(),
                slow_readers: [((None, Backlog::Unsent), (1, 1_048_576))].into(),
                awaiting: Default::default(),
                unreadable: 0,
            }),
        })
        .unwrap();
        for line in [
            r#"tracer_backed_up_sockets{way="unsent"} 2"#,
            r#"tracer_backed_up_bytes{way="unsent"} 5242880"#,
            r#"tracer_slow_reader_sockets{way="unsent"} 1"#,
            "tracer_backed_up_unreadable_processes 0",
            r#"tracer_short_waits_total{kind="futex"} 9168"#,
            r#"tracer_short_wait_seconds_total{kind="futex"} 2.5"#,
            r#"tracer_short_waits_total{kind="recv"} 0"#,
            r#"tracer_blocked_threads{kind="futex",site="app::send_stat",object=""} 32"#,
            r#"tracer_wait_seconds_total{kind="futex",site="app::send_stat",object=""} 1.5"#,
            r#"tracer_waits_total{kind="futex",site="app::send_stat",object=""} 3"#,
            "tracer_events_total 7",
            r#"tracer_lost_events_total{reason="ring_buffer_full"} 2"#,
            "tracer_cpu_seconds_total 1.5",
            "tracer_resident_memory_bytes 4096",
            r#"tracer_folded_series{metric="tracer_waits_total"} 0"#,
            r#"tracer_goroutines{wait_reason="chan send",site="main.sendStat"} 600000"#,
            "# TYPE tracer_goroutines gauge",
            r#"tracer_folded_series{metric="tracer_goroutines"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in:\n{text}");
        }
        // For a client that asks for no OpenMetrics: the same samples, each counter's
        // family named as its samples are, no UNIT or EOF.
        let plain = prometheus_text(&text);
        for line in [
            "# TYPE tracer_waits_total counter",
            "# TYPE tracer_wait_seconds_total counter",
            "# TYPE tracer_goroutines gauge",
            "tracer_events_total 7",
            r#"tracer_waits_total{kind="futex",site="app::send_stat",object=""} 3"#,
        ] {
            assert!(plain.lines().any(|l| l == line), "no line {line} in:\n{plain}");
        }
        assert!(plain.lines().any(|l| l.starts_with("# HELP tracer_waits_total ")), "{plain}");
        assert!(!plain.contains("# EOF") && !plain.contains("# UNIT"), "{plain}");
        assert!(!plain.lines().any(|l| l == "# TYPE tracer_waits counter"), "{plain}");
    }
}
