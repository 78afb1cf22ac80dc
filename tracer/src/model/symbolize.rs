//! Symbolization: each unique raw stack and lock of an aggregate is named once, and the
//! result becomes the `Profile`'s stacks and waker rows.

use std::collections::{BTreeSet, HashMap, HashSet};

use tracer_common::WaitKind;

use super::{
    Profile, ProfileStack, StackKey, WaitAggregate, WaitObject, WaitStats, WakerStats,
    call_site::{Language, call_site},
    modules::module_infos,
    timeline::TimelineStack,
};
use crate::{
    objects::locks::LockNamer,
    stacks::{Frame, ProcessImage, StackSymbolizer},
};

impl WaitAggregate {
    /// Names each unique stack and lock once and builds the profile on `base`.
    pub fn into_profile(
        self,
        base: Profile,
        image: &ProcessImage,
        symbolizer: &mut StackSymbolizer,
        locks: &mut LockNamer,
    ) -> Profile {
        let WaitAggregate { stacks, wakers, thread_names, timeline } = self;
        locks.note_shared(image.pid(), shared_futexes(&stacks));
        let mut objects = ObjectNamer {
            image,
            locks,
            names: HashMap::new(),
            addresses: std::collections::BTreeMap::new(),
        };
        let wakers = waker_rows(wakers, image, symbolizer);
        let symbolized: Vec<ProfileStack> = stacks
            .into_iter()
            .map(|(key, stats)| {
                let StackKey { addresses, kind, object, truncated, in_progress } = key;
                let mut frames = symbolizer.symbolize(image, &addresses);
                frames.reverse(); // root first
                let object = objects.name(object);
                ProfileStack { frames, kind, object, truncated, in_progress, stats, process: None }
            })
            .collect();
        let start_unix_ns = base.start_unix_ns;
        let mut profile = Profile::from_symbolized(base, symbolized);
        profile.timeline = timeline.map(|timeline| {
            // The same names as the stacks' (the symbols and locks are cached by now).
            let names = timeline
                .keys()
                .iter()
                .map(|key| {
                    let mut frames = symbolizer.symbolize(image, &key.addresses);
                    frames.reverse();
                    TimelineStack::new(&frames, key.kind, objects.name(key.object.clone()))
                })
                .collect();
            timeline.into_timeline(names, start_unix_ns)
        });
        profile.thread_names = thread_names;
        profile.wakers = wakers;
        profile.lock_addresses = objects.addresses;
        profile.modules = module_infos(image);
        profile.python = image.python_frames.interpreter();
        profile
    }
}

/// Names what waits wait on, each lock once.
struct ObjectNamer<'a> {
    image: &'a ProcessImage,
    locks: &'a mut LockNamer,
    names: HashMap<u64, Option<String>>,
    /// Each lock named, by name: its address (for reading its holder later).
    addresses: std::collections::BTreeMap<String, u64>,
}

impl ObjectNamer<'_> {
    fn name(&mut self, object: WaitObject) -> Option<String> {
        let Self { image, locks, names, addresses } = self;
        match object {
            WaitObject::None => None,
            WaitObject::Endpoint(endpoint) | WaitObject::Named(endpoint) => Some(endpoint),
            WaitObject::UnresolvedSocket => Some(UNRESOLVED_SOCKET.to_string()),
            WaitObject::Futex(address) => names
                .entry(address)
                .or_insert_with(|| {
                    let lock = locks.name(image, address);
                    // A futex only one thread waits on (its own parker, as in Rust's
                    // channels) names nothing shared: unless a symbol names it, it stays
                    // a plain [futex].
                    (lock.from_symbol || locks.is_shared(image.pid(), address)).then_some(lock.name)
                })
                .clone()
                .inspect(|name| {
                    addresses.insert(name.clone(), address);
                }),
        }
    }
}

/// Who woke the waits at one call site: one row per (waiting site, waker site).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakerRow {
    /// The call site of the waits (as in the call-site table).
    pub waiting_site: String,
    pub kind: WaitKind,
    /// The call site of the waker (its innermost frame in the program's own code).
    pub waker_site: String,
    /// The waker's stack, root first.
    pub waker_frames: Vec<Frame>,
    pub wakes: u64,
    pub waker_threads: BTreeSet<u32>,
}

fn waker_rows(
    wakers: HashMap<StackKey, HashMap<Vec<u64>, WakerStats>>,
    image: &ProcessImage,
    symbolizer: &mut StackSymbolizer,
) -> Vec<WakerRow> {
    let mut rows: HashMap<(String, WaitKind, String), WakerRow> = HashMap::new();
    for (key, by_waker) in wakers {
        let mut waiting = symbolizer.symbolize(image, &key.addresses);
        waiting.reverse();
        let waiting_site = call_site(&waiting, Language::Native).to_string();
        for (waker_stack, stats) in by_waker {
            let mut waker_frames = symbolizer.symbolize(image, &waker_stack);
            waker_frames.reverse();
            let waker_site = call_site(&waker_frames, Language::Native).to_string();
            let row = rows
                .entry((waiting_site.clone(), key.kind, waker_site.clone()))
                .or_insert_with(|| WakerRow {
                    waiting_site: waiting_site.clone(),
                    kind: key.kind,
                    waker_site,
                    waker_frames,
                    wakes: 0,
                    waker_threads: BTreeSet::new(),
                });
            row.wakes += stats.wakes;
            row.waker_threads.extend(stats.threads);
        }
    }
    let mut rows: Vec<WakerRow> = rows.into_values().collect();
    rows.sort_by(|a, b| b.wakes.cmp(&a.wakes).then_with(|| a.waiting_site.cmp(&b.waiting_site)));
    rows
}

/// The object of a socket wait whose socket could not be resolved.
pub const UNRESOLVED_SOCKET: &str = "unresolved";

/// Futex addresses that more than one thread waited on.
pub(super) fn shared_futexes(stacks: &HashMap<StackKey, WaitStats>) -> HashSet<u64> {
    let mut waiters: HashMap<u64, BTreeSet<u64>> = HashMap::new();
    for (key, stats) in stacks {
        if let WaitObject::Futex(address) = key.object {
            waiters.entry(address).or_default().extend(&stats.threads);
        }
    }
    waiters
        .into_iter()
        .filter(|(_, threads)| threads.len() > 1)
        .map(|(address, _)| address)
        .collect()
}
