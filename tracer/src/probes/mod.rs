//! Loads the embedded eBPF probes for one target, attaches them, and reads their
//! counters. Dropping `Probes` detaches everything.

pub mod events;
pub mod golang;
mod kernel_btf;
pub mod stack_spans;
mod task_iter;
pub mod wait_words;

use std::{collections::HashMap, io::Read as _, path::Path, time::Duration};

use crate::cli::MapSizes;
use crate::threads::blocked_now::KnownStart;
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Iter},
};
use tracer_common::{
    COUNTER_COUNT, Counter, InFlightWait, PASS_MAX_PROCESSES, PASS_STATE_LAST_LAP,
    PASS_STATE_PASSES, PASS_STATE_PERIOD_NS, PASS_STATE_PROCESS_SLOTS, PASSES_RING_BYTES,
    SLEEP_STACK_SLOTS, STACK_COPY_BYTES, ShortWaitTotals, SleepStack, TaskLook, WAIT_BEGAN_BEFORE,
    WAIT_KIND_COUNT, WAIT_START_SLOTS, WAITS_RING_BYTES, WAKES_RING_BYTES, WaitKind, WaitSlot,
};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The kernel's BTF could not be parsed.
    #[error("cannot parse the kernel BTF at {path}")]
    Btf {
        path: String,
        #[source]
        source: aya::BtfError,
    },
    /// The kernel BTF lacks what the probes need to read other tasks.
    #[error("cannot read the kernel BTF at {path}")]
    KernelBtf {
        path: String,
        #[source]
        source: kernel_btf::KernelBtfError,
    },
    /// The kernel BTF file could not be read.
    #[error("cannot read the kernel BTF at {path}")]
    ReadBtf {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The object file or one of its maps was refused by the kernel.
    #[error("the kernel refused to load the probes")]
    Load(#[source] aya::EbpfError),
    /// A program failed verification or attach.
    #[error("cannot attach probe {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The task iterator could not be started.
    #[error("cannot start the task iterator")]
    Iterate(#[source] aya::programs::links::LinkError),
    /// The task iterator's output could not be read.
    #[error("cannot read the task iterator")]
    ReadIterator(#[source] std::io::Error),
    /// The kernel BTF does not show how to walk a process's threads (before 6.7).
    #[error("this kernel's BTF does not show a process's list of threads")]
    NoThreadList,
    /// A program the probes define is missing from the embedded object.
    #[error("probe program {name} is missing from the embedded object")]
    MissingProgram { name: &'static str },
    /// The passes in the kernel watch as many processes as they can
    /// (`PASS_MAX_PROCESSES`).
    #[error("the passes in the kernel watch {PASS_MAX_PROCESSES} processes already")]
    PassProcessesFull,
    /// A map the probes define is missing or has the wrong type.
    #[error("probe map {name} is missing or malformed")]
    Map {
        name: &'static str,
        #[source]
        source: Option<aya::maps::MapError>,
    },
}

/// Settings the probes take at load time.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    pub tgid: u32,
    pub min_wait: Duration,
    /// Attach the wake probes too: long futex waits ended by a thread of the target carry
    /// their waker. They run at every wake of the machine (see `attach_wait_probes`).
    pub wakers: bool,
    /// Overrides of the maps' built-in sizes.
    pub maps: MapSizes,
}

/// The loaded probes (attached by `attach_wait_probes`).
pub struct Probes {
    ebpf: Ebpf,
    btf: Btf,
    /// The process whose threads the task iterator walks.
    tgid: u32,
    /// Whether `attach_wait_probes` attaches the wake probes (`ProbeConfig::wakers`).
    wakers: bool,
    /// Whether the kernel names queued wakes (see `attach_wait_probes`).
    queued_wakes: bool,
    /// The task iterator's links to one process's threads each, made at its first pass;
    /// `Err` when the kernel has no such filter (before 6.1), so it is not tried again.
    process_links: HashMap<u32, Result<std::os::fd::OwnedFd, ()>>,
    /// What the last pass of the task iterator wrote: kept, at the size of the largest
    /// pass, so that a sampled read neither zeroes nor regrows it every period.
    pass_bytes: Vec<u8>,
    /// The processes the passes in the kernel walk, by PASS_PROCESSES slot (0: empty).
    pass_processes: Vec<u32>,
    /// Whether this kernel's BTF showed how to walk a process's threads, which a pass in
    /// the kernel needs (`attach_sample_passes`).
    thread_list: bool,
}

/// Per-kind totals of the waits under the threshold.
pub type ShortWaitsByKind = [ShortWaitTotals; WAIT_KIND_COUNT];

/// Counters summed over CPUs, indexed by `Counter`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeCounters(pub [u64; COUNTER_COUNT]);

impl ProbeCounters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }
}

/// Counters of several attachments (or probe sets) added up, counter by counter.
impl std::ops::AddAssign for ProbeCounters {
    fn add_assign(&mut self, other: Self) {
        for (sum, value) in self.0.iter_mut().zip(other.0) {
            *sum += value;
        }
    }
}

/// A ring buffer as small as the kernel allows (a page): the size of the rings a load
/// does not use.
const SMALLEST_RING_BYTES: u32 = 4096;

/// The programs `attach_wait_probes` may attach (which of the wake ones depends on the
/// kernel and on wakers).
const WAIT_PROGRAMS: [&str; 4] =
    ["tracer_sched_switch", "tracer_wakeup", "tracer_waking", "tracer_queued_wake"];

impl Probes {
    /// Loads the object (maps, globals) without attaching anything.
    pub fn open(mut config: ProbeConfig, btf_path: &Path) -> Result<Self, ProbeError> {
        // Its passes' ring is not used.
        config.maps.pass_ring_buffer_bytes = Some(SMALLEST_RING_BYTES);
        Self::open_sized(config, SLEEP_STACK_SLOTS, btf_path)
    }

    /// Loads the object for its task iterator alone (the reads of several processes, of a
    /// daemon's blocked threads): the wait probes will not be attached, so
    /// the maps they fill are made as small as the kernel allows instead of the tens of
    /// MiB of kernel memory they take by default; so is the passes' ring.
    pub fn open_for_reading(tgid: u32, btf_path: &Path) -> Result<Self, ProbeError> {
        Self::open_for_iterator(tgid, Some(SMALLEST_RING_BYTES), btf_path)
    }

    /// Loads the object for a sampled recording: its task iterator, and the passes in the
    /// kernel (`attach_sample_passes`), whose ring takes `passes_ring_bytes` (None:
    /// `PASSES_RING_BYTES`), over process `tgid` (0: none yet; `watch_in_passes` adds
    /// each).
    pub fn open_for_passes(
        tgid: u32,
        passes_ring_bytes: Option<u32>,
        btf_path: &Path,
    ) -> Result<Self, ProbeError> {
        let mut probes = Self::open_for_iterator(tgid, passes_ring_bytes, btf_path)?;
        if tgid != 0 {
            probes.watch_in_passes(tgid)?;
        }
        Ok(probes)
    }

    /// The object with only its task iterator and passes' ring sized (see
    /// `open_for_passes`), watching no process in the passes.
    fn open_for_iterator(
        tgid: u32,
        passes_ring_bytes: Option<u32>,
        btf_path: &Path,
    ) -> Result<Self, ProbeError> {
        let maps = MapSizes {
            ring_buffer_bytes: Some(SMALLEST_RING_BYTES),
            wake_ring_buffer_bytes: Some(SMALLEST_RING_BYTES),
            pass_ring_buffer_bytes: passes_ring_bytes,
        };
        let config = ProbeConfig { tgid, min_wait: Duration::ZERO, wakers: false, maps };
        Self::open_sized(config, 1, btf_path)
    }

    fn open_sized(
        config: ProbeConfig,
        sleep_stack_slots: u32,
        btf_path: &Path,
    ) -> Result<Self, ProbeError> {
        // Read once: aya parses it for the loader, and `kernel_btf` finds task_struct's
        // members in the same bytes.
        let path = || btf_path.display().to_string();
        let raw_btf = std::fs::read(btf_path)
            .map_err(|source| ProbeError::ReadBtf { path: path(), source })?;
        let btf = Btf::parse(&raw_btf, aya::Endianness::default())
            .map_err(|source| ProbeError::Btf { path: path(), source })?;
        let btf_error = |source| ProbeError::KernelBtf { path: path(), source };
        let structs = kernel_btf::KernelStructs::read(&raw_btf).map_err(btf_error)?;
        let task = structs.task_offsets().map_err(btf_error)?;
        // Without it the switch probe reads the clock by a helper call instead.
        let rq_clock = structs.rq_clock_path().unwrap_or(kernel_btf::RqClockPath {
            task_cfs_rq: 0,
            cfs_rq_rq: 0,
            rq_clock: 0,
        });
        let arrivals_offset =
            structs.arrivals_offset().map_or(TaskLook::ARRIVALS_UNKNOWN, u64::from);
        // Without it a wait ended at its switch in counts its wait for a CPU too.
        let last_queued_offset = structs.last_queued_offset().map_or(0, u64::from);
        // Without it a wait whose switch in no tracepoint saw is left out, even a short one.
        let last_arrival_offset = structs.last_arrival_offset().map_or(0, u64::from);
        // Without it, a thread of the target switching out is taken to share its memory.
        let mm_offset = structs.mm_offset().map_or(0, u64::from);
        // Where the queued-wake probe and the passes in the kernel find a task's saved
        // user registers: neither runs without it.
        let stack_offset = structs.stack_offset();
        // Without them, wakes are taken at `sched_waking` (see `attach_wait_probes`).
        let queued_wakes =
            structs.queued_wake_offsets().filter(|_| config.wakers && stack_offset.is_some());
        let wake_entry_offset = queued_wakes.map_or(0, |offsets| u64::from(offsets.wake_entry));
        let min_wait_ns = u64::try_from(config.min_wait.as_nanos()).unwrap_or(u64::MAX);
        // Without them, a sampled recording reads its threads from userspace at the rate.
        let thread_list = structs.thread_list_offsets().filter(|_| stack_offset.is_some());
        let threads = thread_list.unwrap_or_default();
        // Without it, a socket wait's descriptor is named by what it is open on when
        // userspace looks, which a closed and reused descriptor gets wrong.
        let descriptors = structs.descriptor_inode_path().unwrap_or_default();
        let mut loader = EbpfLoader::new();
        // The waits in progress live in task storage, which aya has no map type for; only
        // the kernel side uses it.
        loader.allow_unsupported_maps();
        loader.map_max_entries("SLEEP_STACKS", sleep_stack_slots);
        let MapSizes { ring_buffer_bytes, wake_ring_buffer_bytes, pass_ring_buffer_bytes } =
            config.maps;
        loader.map_max_entries("PASSES", pass_ring_buffer_bytes.unwrap_or(PASSES_RING_BYTES));
        if let Some(bytes) = ring_buffer_bytes {
            loader.map_max_entries("WAITS", bytes);
        }
        if let Some(bytes) = wake_ring_buffer_bytes {
            loader.map_max_entries("WAKES", bytes);
        }
        // The probes wake us once a buffer is a quarter full; a timer drains it otherwise.
        let waits_wake_at = u64::from(ring_buffer_bytes.unwrap_or(WAITS_RING_BYTES) / 4);
        let wakes_wake_at = u64::from(wake_ring_buffer_bytes.unwrap_or(WAKES_RING_BYTES) / 4);
        let ebpf = loader
            .btf(Some(&btf))
            .override_global("WAITS_WAKE_AT_BYTES", &waits_wake_at, true)
            .override_global("WAKES_WAKE_AT_BYTES", &wakes_wake_at, true)
            .override_global("TARGET_TGID", &config.tgid, true)
            .override_global("TRACER_TGID", &std::process::id(), true)
            .override_global("TASK_CFS_RQ_OFFSET", &u64::from(rq_clock.task_cfs_rq), true)
            .override_global("CFS_RQ_RQ_OFFSET", &u64::from(rq_clock.cfs_rq_rq), true)
            .override_global("RQ_CLOCK_OFFSET", &u64::from(rq_clock.rq_clock), true)
            .override_global("MIN_WAIT_NS", &min_wait_ns, true)
            .override_global("TASK_PID_OFFSET", &u64::from(task.pid), true)
            .override_global("TASK_TGID_OFFSET", &u64::from(task.tgid), true)
            .override_global("TASK_COMM_OFFSET", &u64::from(task.comm), true)
            .override_global("TASK_STATE_OFFSET", &u64::from(task.state), true)
            .override_global("TASK_ON_CPU_OFFSET", &u64::from(task.on_cpu), true)
            .override_global("TASK_NVCSW_OFFSET", &u64::from(task.nvcsw), true)
            .override_global("TASK_NIVCSW_OFFSET", &u64::from(task.nivcsw), true)
            .override_global("TASK_ARRIVALS_OFFSET", &arrivals_offset, true)
            .override_global("TASK_LAST_QUEUED_OFFSET", &last_queued_offset, true)
            .override_global("TASK_LAST_ARRIVAL_OFFSET", &last_arrival_offset, true)
            .override_global("WAKES_ATTACHED", &u64::from(config.wakers), true)
            .override_global("TASK_WAKE_ENTRY_OFFSET", &wake_entry_offset, true)
            .override_global("TASK_STACK_OFFSET", &stack_offset.map_or(0, u64::from), true)
            .override_global("TASK_MM_OFFSET", &mm_offset, true)
            .override_global("TASK_SIGNAL_OFFSET", &u64::from(threads.signal), true)
            .override_global("TASK_THREAD_NODE_OFFSET", &u64::from(threads.thread_node), true)
            .override_global("TASK_GROUP_LEADER_OFFSET", &u64::from(threads.group_leader), true)
            .override_global("SIGNAL_THREAD_HEAD_OFFSET", &u64::from(threads.thread_head), true)
            .override_global("SIGNAL_NR_THREADS_OFFSET", &u64::from(threads.nr_threads), true)
            .override_global("TASK_FILES_OFFSET", &u64::from(descriptors.task_files), true)
            .override_global("FILES_FDT_OFFSET", &u64::from(descriptors.files_fdt), true)
            .override_global(
                "FDTABLE_MAX_FDS_OFFSET",
                &u64::from(descriptors.fdtable_max_fds),
                true,
            )
            .override_global("FDTABLE_FD_OFFSET", &u64::from(descriptors.fdtable_fd), true)
            .override_global("FILE_INODE_OFFSET", &u64::from(descriptors.file_inode), true)
            .override_global("INODE_INO_OFFSET", &u64::from(descriptors.inode_ino), true)
            .load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer")))
            .map_err(ProbeError::Load)?;
        Ok(Self {
            ebpf,
            btf,
            tgid: config.tgid,
            wakers: config.wakers,
            queued_wakes: queued_wakes.is_some(),
            process_links: HashMap::new(),
            pass_bytes: Vec::new(),
            pass_processes: Vec::new(),
            thread_list: thread_list.is_some(),
        })
    }

    /// Has the passes in the kernel walk process `pid` too (from its next pass of the task
    /// iterator on, which shows them its threads).
    pub fn watch_in_passes(&mut self, pid: u32) -> Result<(), ProbeError> {
        if self.pass_processes.contains(&pid) {
            return Ok(());
        }
        let slot = match self.pass_processes.iter().position(|&tgid| tgid == 0) {
            Some(slot) => slot,
            None if self.pass_processes.len() < PASS_MAX_PROCESSES as usize => {
                self.pass_processes.push(0);
                self.pass_processes.len() - 1
            }
            None => return Err(ProbeError::PassProcessesFull),
        };
        // Its leader's entry first, for the iterator to fill; then its slot, then the
        // slots a pass looks at.
        map_of::<BpfHashMap<_, u32, u64>>(&mut self.ebpf, "PASS_LEADERS", |leaders| {
            leaders.insert(pid, 0, 0)
        })?;
        map_of::<Array<_, u32>>(&mut self.ebpf, "PASS_PROCESSES", |slots| {
            slots.set(slot as u32, pid, 0)
        })?;
        self.pass_processes[slot] = pid;
        self.set_pass_process_slots()
    }

    /// Stops the passes in the kernel walking process `pid` (it exited, or left).
    pub fn unwatch_in_passes(&mut self, pid: u32) {
        let Some(slot) = self.pass_processes.iter().position(|&tgid| tgid == pid) else {
            return;
        };
        // Its slot emptied before its leader's entry goes: a pass between the two finds no
        // slot of it, not a slot without a leader.
        let emptied = map_of::<Array<_, u32>>(&mut self.ebpf, "PASS_PROCESSES", |slots| {
            slots.set(slot as u32, 0, 0)
        });
        if emptied.is_err() {
            log::warn!("pid {pid}: the passes in the kernel could not stop walking it");
            return;
        }
        self.pass_processes[slot] = 0;
        while self.pass_processes.last() == Some(&0) {
            self.pass_processes.pop();
        }
        let _ = self.set_pass_process_slots();
        let _ = map_of::<BpfHashMap<_, u32, u64>>(&mut self.ebpf, "PASS_LEADERS", |leaders| {
            leaders.remove(&pid)
        });
    }

    /// How many processes the passes in the kernel walk.
    pub fn processes_watched(&self) -> u64 {
        self.pass_processes.iter().filter(|&&tgid| tgid != 0).count() as u64
    }

    fn set_pass_process_slots(&mut self) -> Result<(), ProbeError> {
        let slots = self.pass_processes.len() as u64;
        map_of::<Array<_, u64>>(&mut self.ebpf, "PASS_STATE", |state| {
            state.set(PASS_STATE_PROCESS_SLOTS, slots, 0)
        })
    }

    /// Loads the program of a sampled recording's passes in the kernel
    /// (`tracer_sample_pass`), before the first read: its verification takes a while, which
    /// would otherwise fall between that read and the first pass.
    pub fn load_sample_passes(&mut self) -> Result<(), ProbeError> {
        if !self.thread_list {
            return Err(ProbeError::NoThreadList);
        }
        let name = "tracer_sample_pass";
        let program: &mut aya::programs::PerfEvent = self
            .ebpf
            .program_mut(name)
            .ok_or(ProbeError::MissingProgram { name })?
            .try_into()
            .map_err(|source| ProbeError::Program { name, source })?;
        program.load().map_err(|source| ProbeError::Program { name, source })
    }

    /// Makes a sampled recording's passes in the kernel, every `period`, from now on: a
    /// cpu-clock event on every CPU at that period runs `tracer_sample_pass` (loaded by
    /// `load_sample_passes`), whose first tick in each period walks the threads of the
    /// processes watched (`watch_in_passes`).
    /// Returns the ring the passes write to, which wakes no one: drain it. A process is
    /// walked after a pass of the task iterator over it (the passes start from what it
    /// leaves them).
    pub fn attach_sample_passes(
        &mut self,
        period: Duration,
    ) -> Result<RingBuf<MapData>, ProbeError> {
        use aya::programs::perf_event::{
            PerfEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent,
        };
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
        let name = "tracer_sample_pass";
        let program_error = |source| ProbeError::Program { name, source };
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut(name)
            .ok_or(ProbeError::MissingProgram { name })?
            .try_into()
            .map_err(program_error)?;
        let cpus = aya::util::online_cpus()
            .map_err(|(_, source)| program_error(aya::programs::ProgramError::IOError(source)))?;
        for cpu in cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Period(period_ns),
                    false,
                )
                .map_err(program_error)?;
        }
        // The ticks make no pass until the period is set: none on a CPU attached before
        // another's attach failed.
        self.set_sample_pass_period(period)?;
        self.take_ring_buffer("PASSES")
    }

    /// Has the passes come every `period` from now on: the ticks `attach_sample_passes`
    /// attached keep their period, and one in a period that already had its pass returns
    /// at once, so a period longer than theirs spaces the passes out.
    pub fn set_sample_pass_period(&mut self, period: Duration) -> Result<(), ProbeError> {
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
        let name = "PASS_STATE";
        let map_error = |source| ProbeError::Map { name, source: Some(source) };
        let mut state: Array<&mut MapData, u64> = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::Map { name, source: None })?
            .try_into()
            .map_err(map_error)?;
        // The last pass's time is numbered in the new period as the ticks' are
        // (`pass_claim`): nothing else to reset.
        state.set(PASS_STATE_PERIOD_NS, period_ns, 0).map_err(map_error)
    }

    /// How far the passes got: passes made, and the last lap over every process they
    /// watch (`PassLap`).
    pub fn pass_progress(&self) -> Result<(u64, PassLap), ProbeError> {
        let state: Array<_, u64> =
            Array::try_from(self.map("PASS_STATE")?).map_err(map_error("PASS_STATE"))?;
        let passes = state.get(&PASS_STATE_PASSES, 0).map_err(map_error("PASS_STATE"))?;
        let last_lap = state.get(&PASS_STATE_LAST_LAP, 0).map_err(map_error("PASS_STATE"))?;
        Ok((passes, PassLap::from_word(last_lap)))
    }

    /// Stops the passes `attach_sample_passes` started: each tick then returns at once
    /// (a period of 0), until the probes are dropped.
    pub fn stop_sample_passes(&mut self) {
        let stopped = self
            .ebpf
            .map_mut("PASS_STATE")
            .and_then(|map| Array::<&mut MapData, u64>::try_from(map).ok())
            .is_some_and(|mut state| state.set(PASS_STATE_PERIOD_NS, 0, 0).is_ok());
        if !stopped {
            log::warn!("the passes in the kernel could not be stopped");
        }
    }

    /// Attaches the wait probes: from here on the target's waits are recorded.
    ///
    /// `sched_switch` notes every wait and ends those their wake did not. With wakers,
    /// the wake probe ends futex waits at their wake and takes the waker of long ones, at
    /// every wake of every process: at `sched_wakeup`, with `csd_queue_cpu` for the wakes
    /// the kernel queues to the wakee's CPU (whose `sched_wakeup` runs there, where the
    /// waker is gone). Not at `sched_waking`, which would see every wake in the waker's
    /// context by itself: on this project's test VM an empty program there cost an
    /// untraced futex ping-pong on one CPU 2–4% of its round trips (0–1.5% at
    /// `sched_wakeup`), as much as offcputime in all, and the wake probe there cost the
    /// traced one 16.5% against 9.7% at `sched_wakeup`. Why is not established:
    /// `sched_waking` fires before the wake's preemption check and `sched_wakeup` after
    /// it, but the ping-pong's switches a round trip did not change (counted from /proc).
    /// `sched_waking` stays the fallback where the kernel cannot name queued wakes.
    pub fn attach_wait_probes(&mut self) -> Result<(), ProbeError> {
        let Self { ebpf, btf, wakers, queued_wakes, .. } = self;
        let attach_err = |name| move |source| ProbeError::Program { name, source };
        // Loaded first: a kernel without the tracepoint (before 6.3) or its members
        // falls back to sched_waking.
        let queued = match (*wakers, *queued_wakes) {
            (true, true) => {
                let queued = tracepoint(ebpf, "tracer_queued_wake")?;
                match queued.load("csd_queue_cpu", btf) {
                    Ok(()) => true,
                    Err(err) => {
                        log::info!("queued wakes cannot be read ({err}): wakes at sched_waking");
                        false
                    }
                }
            }
            (true, false) => {
                log::info!("this kernel's tasks name no queued wake: wakes at sched_waking");
                false
            }
            (false, _) => false,
        };
        // The waker's end of long waits before sched_switch, which notes waits and ends
        // the rest; a queued wake's second half before its first.
        if *wakers {
            let (name, function) = match queued {
                true => ("tracer_wakeup", "sched_wakeup"),
                false => ("tracer_waking", "sched_waking"),
            };
            let wake = tracepoint(ebpf, name)?;
            wake.load(function, btf).map_err(attach_err(name))?;
            wake.attach().map_err(attach_err(name))?;
        }
        if queued {
            const NAME: &str = "tracer_queued_wake";
            tracepoint(ebpf, NAME)?.attach().map_err(attach_err(NAME))?;
        }
        const SWITCH: &str = "tracer_sched_switch";
        let switch = tracepoint(ebpf, SWITCH)?;
        switch.load("sched_switch", btf).map_err(attach_err(SWITCH))?;
        switch.attach().map_err(attach_err(SWITCH))?;
        Ok(())
    }

    /// Detaches the wait probes (their maps stay: counters, buffers): nothing more is
    /// written, so that a last drain of the buffers ends.
    pub fn detach_wait_probes(&mut self) {
        for name in WAIT_PROGRAMS {
            let unloaded = tracepoint(&mut self.ebpf, name).map(|program| program.unload());
            if let Ok(Err(err)) = unloaded
                && !matches!(err, aya::programs::ProgramError::NotLoaded)
            {
                log::warn!("cannot detach {name}: {err}");
            }
        }
    }

    /// A look at each of the target's threads, from one pass of the task iterator.
    pub fn task_looks(&mut self) -> Result<Vec<TaskLook>, ProbeError> {
        self.iterate_tasks(Some(self.tgid))
    }

    /// As `task_looks`, of process `pid`: one loaded iterator serves many processes (a
    /// link to each, made at its first pass; `forget_process` closes it).
    pub fn process_task_looks(&mut self, pid: u32) -> Result<Vec<TaskLook>, ProbeError> {
        self.iterate_tasks(Some(pid))
    }

    /// Closes the iterator's link to process `pid` (it exited, or left), and stops the
    /// passes in the kernel walking it.
    pub fn forget_process(&mut self, pid: u32) {
        self.process_links.remove(&pid);
        self.unwatch_in_passes(pid);
    }

    /// A look at every task on the host, from one pass: for the other processes a
    /// report looks at (the peers of its endpoints) besides the target.
    pub fn host_task_looks(&mut self) -> Result<Vec<TaskLook>, ProbeError> {
        self.iterate_tasks(None)
    }

    /// One pass over the threads of `process` (over every task, kept to those of
    /// `process`, where the kernel cannot walk one process's), or over every task.
    fn iterate_tasks(&mut self, process: Option<u32>) -> Result<Vec<TaskLook>, ProbeError> {
        const NAME: &str = "tracer_task_looks";
        let Self { ebpf, btf, process_links, pass_bytes, .. } = self;
        let attach_err = |source| ProbeError::Program { name: NAME, source };
        let iter: &mut Iter = ebpf
            .program_mut(NAME)
            .ok_or(ProbeError::MissingProgram { name: NAME })?
            .try_into()
            .map_err(attach_err)?;
        if iter.fd().is_err() {
            iter.load("task", btf).map_err(attach_err)?;
        }
        if let Some(pid) = process
            && !process_links.contains_key(&pid)
        {
            let program = std::os::fd::AsFd::as_fd(iter.fd().map_err(attach_err)?);
            let link = task_iter::link_to_process(program, pid).map_err(|err| {
                log::info!("no task iterator over one process ({err}): every task's");
            });
            process_links.insert(pid, link);
        }
        let link = process.and_then(|pid| process_links.get(&pid));
        let mut file = match link {
            Some(Ok(link)) => task_iter::start_pass(link).map_err(ProbeError::ReadIterator)?,
            _ => {
                let link_id = iter.attach().map_err(attach_err)?;
                let link = iter.take_link(link_id).map_err(attach_err)?;
                link.into_file().map_err(ProbeError::Iterate)?
            }
        };
        let len = read_pass(&mut file, pass_bytes).map_err(ProbeError::ReadIterator)?;
        let mut looks = parse_task_looks(&pass_bytes[..len]);
        if let Some(pid) = process {
            looks.retain(|look| look.tgid == pid);
        }
        Ok(looks)
    }

    /// The ring buffer of long waits (can be taken once).
    pub fn take_wait_records(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        self.take_ring_buffer("WAITS")
    }

    /// The ring buffer of wakers of long futex waits (can be taken once).
    pub fn take_wake_records(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        self.take_ring_buffer("WAKES")
    }

    fn take_ring_buffer(&mut self, name: &'static str) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self.ebpf.take_map(name).ok_or(ProbeError::Map { name, source: None })?;
        RingBuf::try_from(map).map_err(map_error(name))
    }

    /// The map `name` of the loaded object; its absence is an error of the build.
    fn map(&self, name: &'static str) -> Result<&Map, ProbeError> {
        self.ebpf.map(name).ok_or(ProbeError::Map { name, source: None })
    }

    /// Thread `tid`'s WAIT_STARTS word.
    fn wait_word(&self, tid: u32) -> Result<u64, ProbeError> {
        let words: Array<_, u64> =
            Array::try_from(self.map("WAIT_STARTS")?).map_err(map_error("WAIT_STARTS"))?;
        words.get(&(tid % WAIT_START_SLOTS), 0).map_err(map_error("WAIT_STARTS"))
    }

    /// WAIT_STARTS mapped into our memory, for a look over many threads' words at once.
    pub fn wait_words(&self) -> std::io::Result<wait_words::WaitWords> {
        use std::os::fd::AsFd as _;
        match self.ebpf.map("WAIT_STARTS") {
            Some(Map::Array(words)) => wait_words::WaitWords::map(words.fd().as_fd()),
            _ => Err(std::io::Error::other("no WAIT_STARTS array")),
        }
    }

    /// The start of the wait whose stack copy thread `tid`'s SLEEP_STACKS entry holds, and
    /// how many whole copies the thread took (None when it has no entry).
    pub fn sleep_copy_of(&self, tid: u32) -> Option<(u64, u32)> {
        let stacks =
            aya::maps::HashMap::<_, u32, SleepStack>::try_from(self.map("SLEEP_STACKS").ok()?)
                .ok()?;
        let copy = stacks.get(&tid, 0).ok()?;
        Some((copy.start_ns, copy.whole_copies))
    }

    /// Keeps `stack` (the user stack from its saved sp up) as the copy of thread `tid`'s wait
    /// begun at `start_ns`, as if its sleep had taken it: the probe that ends the wait where
    /// the sleeper's memory cannot be read sends it. `whole_copies` carries the thread's
    /// count on (see `SleepStack::whole_copies`).
    pub fn keep_sleep_copy(
        &mut self,
        tid: u32,
        start_ns: u64,
        stack: &[u8],
        whole_copies: u32,
    ) -> Result<(), String> {
        let len = stack.len().min(STACK_COPY_BYTES);
        let mut copy = SleepStack {
            start_ns,
            len: len as u32,
            asked: STACK_COPY_BYTES as u32,
            whole_copies,
            _pad: 0,
            stack: [0; STACK_COPY_BYTES],
        };
        copy.stack[..len].copy_from_slice(&stack[..len]);
        let map = self.ebpf.map_mut("SLEEP_STACKS").ok_or("no SLEEP_STACKS map")?;
        let mut stacks = aya::maps::HashMap::<_, u32, SleepStack>::try_from(map)
            .map_err(|err| err.to_string())?;
        stacks.insert(tid, copy, 0).map_err(|err| err.to_string())
    }

    /// IN_FLIGHT's descriptor, for the task-storage calls aya has no type for.
    fn in_flight_raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        match self.ebpf.map("IN_FLIGHT") {
            Some(Map::Unsupported(in_flight)) => Some(in_flight.fd().as_fd().as_raw_fd()),
            _ => None,
        }
    }

    pub fn counters(&self) -> Result<ProbeCounters, ProbeError> {
        let mut counters = ProbeCounters::default();
        self.sum_counters("COUNTERS", &mut counters.0)?;
        Ok(counters)
    }

    /// One counter, summed over CPUs (one lookup, where `counters` makes one per counter).
    pub fn counter(&self, counter: tracer_common::Counter) -> Result<u64, ProbeError> {
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map("COUNTERS")?).map_err(map_error("COUNTERS"))?;
        Ok(array.get(&(counter as u32), 0).map_err(map_error("COUNTERS"))?.iter().sum())
    }

    /// Fills `slots` with the per-CPU array `name`'s first entries, each summed over CPUs.
    fn sum_counters(&self, name: &'static str, slots: &mut [u64]) -> Result<(), ProbeError> {
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_error(name))?;
        for (index, slot) in slots.iter_mut().enumerate() {
            *slot = array.get(&(index as u32), 0).map_err(map_error(name))?.iter().sum();
        }
        Ok(())
    }

    /// The calls in flight whose thread is asleep in them: when each began, by thread.
    /// A wait is in its thread's WAIT_STARTS word, or, when another thread of the slot
    /// holds the word, in task storage, whose entries hang off the tasks: looked up by a
    /// pidfd of the thread's own (a thread gone meanwhile is simply absent), and told over
    /// by the thread's switch count when a later wait went to the word.
    pub fn waits_in_progress(
        &self,
        pid: u32,
    ) -> Result<crate::threads::blocked_now::KnownWaitStarts, ProbeError> {
        let map_fd =
            self.in_flight_raw_fd().ok_or(ProbeError::Map { name: "IN_FLIGHT", source: None })?;
        let mut starts = std::collections::HashMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Ok(starts);
        };
        for tid in tasks.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            // Read before the wait: a thread that runs and blocks again in between has a
            // later count than its wait's, and is aged as a wait begun unseen.
            let runs = thread_runs(pid, tid);
            match WaitSlot::read(self.wait_word(tid)?, tid) {
                WaitSlot::InProgress { start, .. } => {
                    // The word keeps the start's low bits: the rest from the clock now.
                    let now = crate::threads::blocked_now::monotonic_now_ns();
                    let start_ns = now.saturating_sub(WaitSlot::elapsed_ns(start, now));
                    starts.insert(tid, KnownStart { start_ns, runs });
                }
                WaitSlot::Ended => {}
                WaitSlot::Unknown => {
                    // An adopted wait's start is the attach, not its beginning: it is aged
                    // from the scheduler like the waits the probes never saw.
                    let Some(wait) = lookup_task_storage(map_fd, tid) else { continue };
                    if wait.start_ns != 0
                        && wait.flags & WAIT_BEGAN_BEFORE == 0
                        && thread_switches(pid, tid) == Some(wait.switches)
                    {
                        starts.insert(tid, KnownStart { start_ns: wait.start_ns, runs });
                    }
                }
            }
        }
        Ok(starts)
    }

    /// Hands the (attached) probes the wait thread `tid` is in, begun before they were
    /// attached, with its stack (for the end of a wait no probe can read it at): from now
    /// on its end is seen as any other's.
    pub fn adopt_wait(
        &mut self,
        tid: u32,
        wait: InFlightWait,
        stack: &[u8],
    ) -> Result<(), AdoptError> {
        const BPF_NOEXIST: u64 = 1;
        let map_err = |name| move |source| AdoptError::Map { name, source };
        // The wait first, and only if the probes have not seen the thread sleep since the
        // attach (its word is not its own, nor has it an entry): then it has no stack copy
        // of its own that ours could replace. (A wait that ends before the copy is in place
        // is sent without a stack, and counted.) A sleep the probes note meanwhile
        // makes the entry over, by its switch count.
        let word = self
            .wait_word(tid)
            .map_err(|err| map_err("WAIT_STARTS")(std::io::Error::other(err.to_string())))?;
        if WaitSlot::read(word, tid) != WaitSlot::Unknown {
            return Err(AdoptError::AlreadyNoted);
        }
        let map_fd = self.in_flight_fd()?;
        let mut value = wait;
        match task_storage_call(MapCommand::Update, map_fd, tid, &mut value, BPF_NOEXIST) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                return Err(AdoptError::AlreadyNoted);
            }
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return Err(AdoptError::Gone),
            Err(err) => return Err(map_err("IN_FLIGHT")(err)),
        }
        // Without the copy the wait is still counted; only a stack no probe can read at its
        // end is missing then (and counted as unreadable).
        if let Err(err) = self.keep_sleep_copy(tid, wait.start_ns, stack, 0) {
            log::warn!("thread {tid}: cannot keep the stack of its wait in progress: {err}");
        }
        Ok(())
    }

    /// Takes back the wait `adopt_wait` gave for thread `tid` (it woke before the hand-over
    /// was done), unless the probes have ended it or noted another since.
    pub fn withdraw_wait(&mut self, tid: u32, start_ns: u64) {
        let Ok(map_fd) = self.in_flight_fd() else { return };
        if lookup_task_storage(map_fd, tid).is_some_and(|wait| wait.start_ns == start_ns) {
            let mut unused = InFlightWait::default();
            let _ = task_storage_call(MapCommand::Delete, map_fd, tid, &mut unused, 0);
        }
    }

    fn in_flight_fd(&self) -> Result<std::os::fd::RawFd, AdoptError> {
        self.in_flight_raw_fd().ok_or_else(|| AdoptError::Map {
            name: "IN_FLIGHT",
            source: std::io::Error::other("missing"),
        })
    }

    pub fn short_waits(&self) -> Result<ShortWaitsByKind, ProbeError> {
        let err = map_error("SHORT_WAITS");
        let array: PerCpuArray<_, ShortWaitTotals> =
            PerCpuArray::try_from(self.map("SHORT_WAITS")?).map_err(&err)?;
        let mut totals = [ShortWaitTotals::default(); WAIT_KIND_COUNT];
        for kind in WaitKind::ALL {
            for per_cpu in array.get(&(kind as u32), 0).map_err(&err)?.iter() {
                totals[kind as usize].count += per_cpu.count;
                totals[kind as usize].total_ns += per_cpu.total_ns;
            }
        }
        Ok(totals)
    }
}

/// How an operation on the map `name` failed.
fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source: Some(source) }
}

/// How many times thread `tid` has run (`BlockedState::runs`, from /proc).
fn thread_runs(pid: u32, tid: u32) -> Option<u64> {
    let schedstat =
        crate::pipeline::target::read_proc_text(format!("/proc/{pid}/task/{tid}/schedstat"))
            .ok()?;
    crate::threads::parse_run_count(&schedstat)
}

/// Context switches of thread `tid` of `pid` so far, voluntary or not, as the probes count
/// them (`InFlightWait::switches`); `None` when the thread is gone.
fn thread_switches(pid: u32, tid: u32) -> Option<u64> {
    let status =
        crate::pipeline::target::read_proc_text(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let count = |name: &str| -> Option<u64> {
        status.lines().find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
    };
    Some(count("voluntary_ctxt_switches:")? + count("nonvoluntary_ctxt_switches:")?)
}

/// A pidfd of thread `tid` (PIDFD_THREAD, Linux 6.9+): the key of a task-storage map.
fn thread_pidfd(tid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const PIDFD_THREAD: libc::c_int = libc::O_EXCL;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, PIDFD_THREAD) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw as i32) })
}

/// The BPF map commands used on task storage (include/uapi/linux/bpf.h).
#[derive(Clone, Copy)]
enum MapCommand {
    Lookup = 1,
    Update = 2,
    Delete = 3,
}

/// One BPF_MAP_*_ELEM call on the task-storage map `map_fd`, keyed by thread `tid`;
/// `value` is read (update) or filled (lookup), unused by delete.
fn task_storage_call(
    command: MapCommand,
    map_fd: std::os::fd::RawFd,
    tid: u32,
    value: &mut InFlightWait,
    flags: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    /// `union bpf_attr` as the BPF_MAP_*_ELEM commands read it.
    #[repr(C)]
    struct MapElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let pidfd = thread_pidfd(tid)?;
    let key: i32 = pidfd.as_raw_fd();
    let attr = MapElemAttr {
        map_fd: map_fd as u32,
        _pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_mut(value) as u64,
        flags,
    };
    // SAFETY: `attr` points at a live key and a value of the map's value size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_long,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<MapElemAttr>(),
        )
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// The task-storage value of thread `tid`, if it has one.
fn lookup_task_storage(map_fd: std::os::fd::RawFd, tid: u32) -> Option<InFlightWait> {
    let mut value = InFlightWait::default();
    task_storage_call(MapCommand::Lookup, map_fd, tid, &mut value, 0).ok()?;
    Some(value)
}

/// Why a wait in progress could not be handed to the probes.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The probes have seen the thread sleep since they were attached: they track it.
    #[error("the probes already track this thread")]
    AlreadyNoted,
    /// The thread exited.
    #[error("the thread exited")]
    Gone,
    #[error("probe map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A thread's name as the kernel keeps it (`task_struct.comm`, NUL-padded), as text.
pub fn comm_text(comm: &[u8; 16]) -> String {
    let len = comm.iter().position(|&byte| byte == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..len]).into_owned()
}

/// The last lap of the passes over every process they watch, as the kernel keeps it
/// (`PASS_STATE_LAST_LAP`): how many came round, and the number of the pass that ended
/// the last, of which the low 32 bits are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassLap {
    pub laps: u32,
    pub ended_by_pass: u32,
}

impl PassLap {
    fn from_word(word: u64) -> Self {
        Self { laps: (word >> 32) as u32, ended_by_pass: word as u32 }
    }
}

/// Reads everything a pass of the iterator writes into `bytes` and returns its length.
/// `bytes` starts at a size that holds a few hundred looks and doubles when full; it keeps
/// its size for the next pass. (`read_to_end` probes with short reads first and asks for
/// the file's size and position, a dozen syscalls where two do, every period.)
fn read_pass(file: &mut std::fs::File, bytes: &mut Vec<u8>) -> std::io::Result<usize> {
    const FIRST_READ_BYTES: usize = 32 << 10;
    if bytes.is_empty() {
        bytes.resize(FIRST_READ_BYTES, 0);
    }
    let mut len = 0;
    loop {
        if len == bytes.len() {
            bytes.resize(bytes.len() * 2, 0);
        }
        match file.read(&mut bytes[len..]) {
            Ok(0) => break,
            Ok(read) => len += read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(len)
}

/// The looks in a pass of the task iterator (native-endian `TaskLook` records); a partial
/// record at the end is left out.
fn parse_task_looks(bytes: &[u8]) -> Vec<TaskLook> {
    bytes
        .chunks_exact(size_of::<TaskLook>())
        // SAFETY: a chunk of exactly the record's size, read unaligned; every field is an
        // integer, so any bytes make a valid TaskLook.
        .map(|chunk| unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<TaskLook>()) })
        .collect()
}

/// The `tp_btf` program `name` of the object.
/// Runs `update` on the loaded object's map `name`, of type `M`.
fn map_of<'a, M>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    update: impl FnOnce(&mut M) -> Result<(), MapError>,
) -> Result<(), ProbeError>
where
    M: TryFrom<&'a mut Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or(ProbeError::Map { name, source: None })?;
    let mut map = M::try_from(map).map_err(map_error(name))?;
    update(&mut map).map_err(map_error(name))
}

fn tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut BtfTracePoint, ProbeError> {
    let program = ebpf.program_mut(name).ok_or(ProbeError::MissingProgram { name })?;
    program.try_into().map_err(|source| ProbeError::Program { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_looks_parse_as_records_and_ignore_a_partial_tail() {
        let looks = [
            TaskLook {
                tid: 7,
                tgid: 5,
                state: 1,
                switches: 40,
                syscall_nr: 202,
                ip: 1,
                sp: 2,
                bp: 3,
                ..TaskLook::default()
            },
            TaskLook {
                tid: 8,
                tgid: 5,
                syscall_nr: -1,
                args: [1, 2, 3, 4, 5, 6],
                ..TaskLook::default()
            },
        ];
        let mut bytes = Vec::new();
        for look in &looks {
            // SAFETY: a plain-old-data record viewed as its bytes.
            bytes.extend_from_slice(unsafe {
                std::slice::from_raw_parts(
                    (look as *const TaskLook).cast::<u8>(),
                    size_of::<TaskLook>(),
                )
            });
        }
        bytes.extend_from_slice(&[9, 9]);
        assert_eq!(parse_task_looks(&bytes), looks);
    }
}
