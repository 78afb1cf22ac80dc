//! tracer's kernel-side probes: which threads of one process block, in which call,
//! for how long, and (for waits over the threshold) where in the program.
//!
//! Scheduler tracepoints share each thread's wait in progress (`WAIT_STARTS`); nothing runs
//! on a syscall's entry or exit, so calls that do not sleep cost nothing, and other
//! processes cost comparisons of thread-group ids: a switch's two with the target's, then
//! with the tracer's (whose switches measure `SWITCH_CLOCK`); a wake's one.
//! - `sched_switch`, on the side of the thread going to sleep (`prev`, whose context it
//!   runs in), notes a wait when a thread of the target sleeps inside a watched call (the
//!   call and its arguments read from the registers saved at syscall entry). For waits a
//!   thread of the target is unlikely to end (socket calls, timed or process-shared futex
//!   waits), it keeps a copy of the user stack too: as much as the thread's last walk
//!   from the same registers read (`ThreadSpans`), else all of `STACK_COPY_BYTES`.
//! - `sched_wakeup`, at the wake of a thread of the target in a futex wait, in the waker's
//!   context, ends the wait there: under the threshold only adding it to per-kind totals;
//!   over it, when a thread of the target wakes it, sending it with the sleeper's stack,
//!   read as it slept through the memory the waker shares, and the waker's stack too when
//!   it is in a futex wake. Other waits have no waker to take: their wakes read nothing.
//!   A wake the kernel queues to the wakee's CPU (idle, or sharing no cache with the
//!   waker's) runs `sched_wakeup` there instead, where the waker is gone: `csd_queue_cpu`
//!   takes it in the waker's context (`tracer_queued_wake`), and `QUEUED_WAKES` tells the
//!   second half to do nothing. Not `sched_waking`, where even an empty program costs a
//!   futex ping-pong on one CPU several times what it does at `sched_wakeup` (see the
//!   loader's `attach_wait_probes`).
//! - `sched_switch`, on the side of the thread switched in (`next`), ends every other
//!   wait (not a futex wait, woken from outside the process, or its wake missed by a race
//!   with the sleep) at the time its wake queued it (`sched_info.last_queued`): under the
//!   threshold it only adds to per-kind totals; over it, it sends the registers and a copy
//!   of the user stack (read from memory when `prev` is a thread of the target, else the
//!   copy kept from the sleep) to userspace.
//! - `sched_switch`, on the side of a thread of the target switching out, first ends a
//!   wait its word still holds: one whose switch in reached no tracepoint (rare), timed to
//!   the thread's last arrival when short, else left out and counted.
//!
//! Without wakers (`--no-wakers`, `WAKES_ATTACHED` 0) only `sched_switch` is attached:
//! every machine-wide wake then costs nothing, and every wait ends at its switch in, so a
//! futex sleep keeps a stack copy too, unless its thread's last waits all ended short
//! (`SHORT_RUNS`: a ping-pong's handoffs copy nothing).
//!
//! Most waits are short, and every step on their way is a helper call saved or spent (each
//! returns through the SRSO Safe-RET thunk on this VM's CPUs). A thread's wait is a word of
//! a plain array, which the verifier inlines (`WAIT_STARTS`: in progress or not, since when,
//! of which kind), taken at the sleep by a compare-and-swap; only while another thread of
//! its slot holds the word does a wait go to task storage (`IN_FLIGHT`, a helper call).
//!
//! Reading the clock is a probe's dearest step (a helper, an indirect call and a TSC read:
//! 3 to 4.5 points of a traced futex ping-pong's round trips here, once per handoff). A
//! switch needs none: the scheduler has just read its run queue's clock (`rq->clock`,
//! `sched_clock`), which the probe loads from memory and moves to `CLOCK_MONOTONIC` by an
//! offset it measures at the tracer's own switches (`SWITCH_CLOCK`). Nor does a wake at
//! `sched_wakeup`: the wakee's run queue read its clock for the enqueue just before. A
//! queued wake (`csd_queue_cpu`, before that run queue is touched) and the `sched_waking`
//! fallback read the clock: a wait that has lasted the threshold may end there, with the
//! waker's stack, and no clock the waker's CPU has kept tells that closely enough (a run
//! queue's can be a tick behind).
//!
//! A call that sleeps twice (a spurious wake, an epoll that found nothing ready) counts
//! as two waits; its blocked time is the same. All are attached raw (`tp_btf`): a classic
//! tracepoint program would first have the kernel fill a perf record for every switch.
//!
//! Besides: a task iterator (`iter/task`) that reads every task's saved registers for
//! `snapshot`; a sampled recording's passes over the target's threads, run by a cpu-clock
//! event of each CPU (`tracer_sample_pass`, nothing on the scheduler's paths); and for Go
//! programs two uprobes (`runtime.gopark`, `runtime.execute`) that time goroutine waits in
//! the Go scheduler.
#![no_std]
#![no_main]
// A compare-and-swap (BPF_CMPXCHG): core's atomics offer none on the bpf target.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::{
    Global,
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs, seq_file, task_struct,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{
            self, bpf_get_current_task_btf, bpf_probe_read_user, bpf_seq_write, bpf_task_pt_regs,
        },
    },
    macros::{btf_map, btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use tracer_common::{
    COUNTER_COUNT, Counter, GO_COUNTER_COUNT, GoCounter, GoPark, GoWaitKey, GoWaitTotals,
    InFlightWait, PASS_END, PASS_LOOK, PASS_MAX_PROCESSES, PASS_MAX_THREADS, PASS_STACK,
    PASS_STATE_ENTRIES, PASS_STATE_LAST_LAP, PASS_STATE_LAST_PASS_NS, PASS_STATE_PASSES,
    PASS_STATE_PERIOD_NS, PASS_STATE_PROCESS_SLOTS, PASSES_RING_BYTES, PassEnd, PassLook,
    PassStack, SLEEP_STACK_SLOTS, STACK_COPY_BYTES, STACK_SPAN_SLOTS, ShortRun, ShortWaitTotals,
    SleepStack, SwitchClock, TaskLook, ThreadSpans, WAIT_KIND_COUNT, WAIT_SPAN_SAMPLE,
    WAIT_STACK_FROM_SLEEP_COPY, WAIT_START_SLOTS, WAITS_RING_BYTES, WAKES_RING_BYTES, WaitKind,
    WaitRecord, WaitSlot, WakeRecord, WordVerdict, classify_syscall, is_futex_wake, is_span_sample,
    pass_claim, pass_id, syscall_nr,
};

/// The process (tgid) to trace; set by the loader.
#[unsafe(no_mangle)]
static TARGET_TGID: Global<u32> = Global::new(0);

/// The tracer's own process: its switches calibrate `SWITCH_CLOCK`; set by the loader.
#[unsafe(no_mangle)]
static TRACER_TGID: Global<u32> = Global::new(0);

/// The path from a task to its run queue's clock (`task->se.cfs_rq->rq->clock`, see
/// tracer's kernel_btf.rs); set by the loader, 0 when this kernel has no such path.
#[unsafe(no_mangle)]
static TASK_CFS_RQ_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static CFS_RQ_RQ_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static RQ_CLOCK_OFFSET: Global<u64> = Global::new(0);

/// Waits at least this long are sent with a stack; shorter ones are only counted.
#[unsafe(no_mangle)]
static MIN_WAIT_NS: Global<u64> = Global::new(1_000_000);

/// Offsets of `tgid` and `comm` in this kernel's `struct task_struct` (from its BTF); set
/// by the loader. `next` in sched_switch is not the current task, so no helper reads them.
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_COMM_OFFSET: Global<u64> = Global::new(0);
/// Offset of `pid` (the thread id) in `struct task_struct`; set by the loader.
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: Global<u64> = Global::new(0);
/// Offsets of `__state`, `on_cpu`, `nvcsw` and `nivcsw` in `struct task_struct`, for the
/// task iterator's looks; set by the loader.
#[unsafe(no_mangle)]
static TASK_STATE_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_ON_CPU_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_NVCSW_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_NIVCSW_OFFSET: Global<u64> = Global::new(0);
/// Offset of `sched_info.pcount` in `struct task_struct`, for the looks' `arrivals`;
/// `TaskLook::ARRIVALS_UNKNOWN` where the kernel has none. Set by the loader.
#[unsafe(no_mangle)]
static TASK_ARRIVALS_OFFSET: Global<u64> = Global::new(TaskLook::ARRIVALS_UNKNOWN);
/// Offset of `sched_info.last_queued` in `struct task_struct`: when a task was put on a
/// run queue (by its wake, for a sleeper), by that run queue's clock; 0 where the kernel
/// has none. Set by the loader.
#[unsafe(no_mangle)]
static TASK_LAST_QUEUED_OFFSET: Global<u64> = Global::new(0);
/// Offset of `sched_info.last_arrival` in `struct task_struct`: when a task was last
/// switched in, by its run queue's clock; 0 where the kernel has none. Set by the loader.
#[unsafe(no_mangle)]
static TASK_LAST_ARRIVAL_OFFSET: Global<u64> = Global::new(0);
/// 1 when the wake probes are attached (the wakers recorded); 0 when only `sched_switch`
/// is, and every wait ends at its switch in. Set by the loader.
#[unsafe(no_mangle)]
static WAKES_ATTACHED: Global<u64> = Global::new(1);

/// Where a queued wake's node (`wake_entry`) and the kernel stack's base (`stack`) lie in
/// `struct task_struct`; set by the loader when it attaches `tracer_queued_wake`.
#[unsafe(no_mangle)]
static TASK_WAKE_ENTRY_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_STACK_OFFSET: Global<u64> = Global::new(0);
/// Offset of `mm` in `struct task_struct`: NULL in a thread that is exiting, whose memory
/// is no longer its to read; 0 where unknown. Set by the loader.
#[unsafe(no_mangle)]
static TASK_MM_OFFSET: Global<u64> = Global::new(0);

/// The path from a task to the inode of one of its descriptors
/// (`task->files->fdt->fd[n]->f_inode->i_ino`), for a socket or pipe wait's record: the
/// wait's descriptor may be closed and reused before userspace reads it, which then tells
/// by the inode. Set by the loader; 0 where this kernel has no such path.
#[unsafe(no_mangle)]
static TASK_FILES_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static FILES_FDT_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static FDTABLE_MAX_FDS_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static FDTABLE_FD_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static FILE_INODE_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static INODE_INO_OFFSET: Global<u64> = Global::new(0);

mod task_storage;

use task_storage::TaskStorage;

/// A thread's wait in progress when another thread's wait holds its WAIT_STARTS word,
/// stored on its task (not per CPU: a thread may wake on another CPU; not by tid in a
/// hash: the task pointer finds it without hashing). The tracer puts here too a wait it
/// finds in progress at the attach.
#[btf_map]
static IN_FLIGHT: TaskStorage<InFlightWait> = TaskStorage::new();

/// Each thread's latest wait in one word (see `WaitSlot`), which a wait takes unless
/// another thread of the same slot is in a wait that holds it. Mapped into the tracer's
/// memory too: without wakers it looks over the target's waits every few milliseconds for
/// long ones that kept no stack copy (`pipeline::late_copies`), a load per thread.
#[map]
static WAIT_STARTS: Array<u64> =
    Array::with_max_entries(WAIT_START_SLOTS, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Wakes queued to the wakee's CPU, by WAIT_STARTS slot: the thread id whose wake
/// `tracer_queued_wake` took in the waker's context, until `tracer_wakeup` runs the wake's
/// second half on the wakee's CPU, where the current task is not the waker, and clears it.
#[map]
static QUEUED_WAKES: Array<u32> = Array::with_max_entries(WAIT_START_SLOTS, 0);

/// Each thread's run of waits ended short (see `ShortRun`), a slot per WAIT_STARTS slot;
/// kept only without the wake probe.
#[map]
static SHORT_RUNS: Array<u32> = Array::with_max_entries(WAIT_START_SLOTS, 0);

/// `tid`'s WAIT_STARTS word: an aligned word, which other CPUs rewrite whole.
#[inline(always)]
fn wait_word(tid: u32) -> Option<*mut u64> {
    WAIT_STARTS.get_ptr_mut(tid % WAIT_START_SLOTS)
}

/// Whether a wait begun at `start_ns` is, at `now`, shorter than `MIN_WAIT_NS`.
#[inline(always)]
fn under_threshold(start_ns: u64, now: u64) -> bool {
    now.saturating_sub(start_ns) < MIN_WAIT_NS.load()
}

/// Context switches of `task` so far, voluntary or not (see `InFlightWait::switches`).
///
/// # Safety
/// `task` must be a BTF task pointer, as for [`task_field`].
#[inline(always)]
unsafe fn switches_of(task: *mut task_struct) -> u64 {
    // SAFETY: as the caller promises.
    unsafe {
        task_field_u64(task, TASK_NVCSW_OFFSET.load())
            .wrapping_add(task_field_u64(task, TASK_NIVCSW_OFFSET.load()))
    }
}

/// Stacks copied as threads went to sleep, by tid (see `SleepStack`).
#[map]
static SLEEP_STACKS: LruHashMap<u32, SleepStack> =
    LruHashMap::with_max_entries(SLEEP_STACK_SLOTS, 0);

/// How much of each thread's stack its last walks read, and from where (see
/// `ThreadSpans`); written by userspace.
#[map]
static STACK_SPANS: LruHashMap<u32, ThreadSpans> =
    LruHashMap::with_max_entries(STACK_SPAN_SLOTS, 0);

/// Room to build a SLEEP_STACKS value (too big for the BPF stack) before inserting it.
#[map]
static SLEEP_STACK_SCRATCH: PerCpuArray<SleepStack> = PerCpuArray::with_max_entries(1, 0);

/// Waits over the threshold, with their stacks. 16 MiB holds about a thousand records.
#[map]
static WAITS: RingBuf = RingBuf::with_byte_size(WAITS_RING_BYTES, 0);

/// Wake userspace once WAITS holds this much (a quarter of its size); set by the loader,
/// which may resize WAITS.
#[unsafe(no_mangle)]
static WAITS_WAKE_AT_BYTES: Global<u64> = Global::new(WAITS_RING_BYTES as u64 / 4);

/// Count and total time of the waits under the threshold, per kind.
#[map]
static SHORT_WAITS: PerCpuArray<ShortWaitTotals> =
    PerCpuArray::with_max_entries(WAIT_KIND_COUNT as u32, 0);

/// Wakes of long futex waits by the target's threads, with the waker's stack.
#[map]
static WAKES: RingBuf = RingBuf::with_byte_size(WAKES_RING_BYTES, 0);

/// Likewise for WAKES.
#[unsafe(no_mangle)]
static WAKES_WAKE_AT_BYTES: Global<u64> = Global::new(WAKES_RING_BYTES as u64 / 4);

/// Event and loss counters, indexed by `Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT as u32, 0);

/// `CLOCK_MONOTONIC` minus the run queues' clock, measured at the tracer's own switches
/// (see `SwitchClock`).
#[map]
static SWITCH_CLOCK: Array<SwitchClock> = Array::with_max_entries(1, 0);

/// Submit flags that wake userspace only once `ring` holds `wake_at` bytes: it drains on a
/// timer too (events.rs), and a wake-up per record would schedule the tracer hundreds of
/// times a second on CPUs the traced service needs.
#[inline(always)]
fn wake_flags(ring: &RingBuf, wake_at: u64) -> u64 {
    if ring.query(BPF_RB_AVAIL_DATA as u64) >= wake_at {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn count(counter: Counter) {
    add(counter, 1);
}

#[inline(always)]
fn add(counter: Counter, amount: u64) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; no other program touches it on this CPU meanwhile.
        unsafe { *value += amount };
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: the helper takes no arguments and cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn target_thread() -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 != TARGET_TGID.load() {
        return None;
    }
    Some(pid_tgid as u32)
}

/// The n-th argument of the syscall whose user registers are `regs` (x86_64 order:
/// rdi, rsi, rdx, r10, r8, r9).
///
/// `regs` must be a BTF pointer (a tp_btf argument or `bpf_task_pt_regs`): the verifier
/// then turns these plain loads into fault-checked ones, cheaper than a read helper call.
#[inline(always)]
fn syscall_arg(regs: *const pt_regs, n: usize) -> u64 {
    // SAFETY: as above; a fault reads 0.
    unsafe {
        match n {
            0 => (*regs).rdi,
            1 => (*regs).rsi,
            2 => (*regs).rdx,
            3 => (*regs).r10,
            4 => (*regs).r8,
            _ => (*regs).r9,
        }
    }
}

/// Arguments: (bool preempt, task_struct *prev, task_struct *next, unsigned int prev_state),
/// see include/trace/events/sched.h; the program runs in the context of `prev`.
#[btf_tracepoint(function = "sched_switch")]
pub fn tracer_sched_switch(ctx: BtfTracePointContext) -> u32 {
    let target = TARGET_TGID.load();
    let prev: *mut task_struct = ctx.arg(1);
    let next: *mut task_struct = ctx.arg(2);
    // Plain loads of both tasks' ids, no helper call: every switch of the machine runs
    // this. SAFETY: BTF task pointers from the tracepoint; see `task_field`.
    let prev_tgid = unsafe { task_field(prev, TASK_TGID_OFFSET.load()) };
    let next_tgid = unsafe { task_field(next, TASK_TGID_OFFSET.load()) };
    let (prev_is_target, next_is_target) = (prev_tgid == target, next_tgid == target);
    if !prev_is_target && !next_is_target {
        let tracer = TRACER_TGID.load();
        if prev_tgid == tracer || next_tgid == tracer {
            measure_switch_clock(prev);
        }
        return 0;
    }
    // Both ends of the switch share one clock reading: the run queue's.
    let task = if prev_is_target { prev } else { next };
    let mut clock = SwitchTime { task, now: 0, offset: None, woken: 0 };
    if prev_is_target {
        // SAFETY: as above.
        let tid = unsafe { task_field(prev, TASK_PID_OFFSET.load()) };
        // The thread's word, looked up once for both.
        let word = wait_word(tid);
        if let Some(word) = word {
            end_unseen_wait(prev, tid, word, &mut clock);
        }
        note_sleep(&ctx, prev, tid, word, &mut clock);
    }
    if next_is_target {
        // A thread of the target on its way out (its last switch, after exit_mm) no longer
        // has the memory to read `next`'s stack in.
        let mm = TASK_MM_OFFSET.load();
        // SAFETY: as above; an 8-byte member.
        let prev_shares_memory =
            prev_is_target && (mm == 0 || unsafe { task_field_u64(prev, mm) } != 0);
        end_at_switch_in(next, prev_shares_memory, &mut clock);
    }
    0
}

/// `CLOCK_MONOTONIC` now, read once, when first asked for.
trait Clock {
    fn now(&mut self) -> u64;
}

/// The clock helper (a helper call, and a slow TSC read in a VM).
struct LazyClock(u64);

impl Clock for LazyClock {
    #[inline(always)]
    fn now(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = now_ns();
        }
        self.0
    }
}

/// `CLOCK_MONOTONIC` at a switch: the switch's run-queue clock moved by the measured
/// offset, loaded when first asked for; the clock helper until the offset is measured or
/// where the run queue cannot be read.
struct SwitchTime {
    /// A task of the switch (prev or next: both are on this CPU's run queue).
    task: *mut task_struct,
    now: u64,
    /// The measured offset `now` moved the run queue's clock by (None until measured):
    /// `woken_at` moves another run-queue time by it.
    offset: Option<u64>,
    /// When the thread switched in was woken (`woken_at`), once asked for.
    woken: u64,
}

impl Clock for SwitchTime {
    #[inline(always)]
    fn now(&mut self) -> u64 {
        if self.now == 0 {
            self.offset = SWITCH_CLOCK.get(0).filter(|clock| clock.measured == 1).map(|c| c.offset);
            self.now = match self.offset {
                // SAFETY: a task of the switch, a BTF pointer.
                Some(offset) => match unsafe { run_queue_clock(self.task) } {
                    0 => now_ns(),
                    rq_clock => rq_clock.wrapping_add(offset),
                },
                None => now_ns(),
            };
        }
        self.now
    }
}

impl SwitchTime {
    /// When `next`, the thread switched in, was woken: when its wake put it on a run
    /// queue (`sched_info.last_queued`, by that queue's clock, which this switch clears
    /// only after the tracepoint), so that a wait ended here leaves out the time its
    /// thread then waited for a CPU. (Moved to another CPU's queue meanwhile, it was
    /// queued again there: a little later.) The switch's time where that is not known.
    #[inline(always)]
    fn woken_at(&mut self, next: *mut task_struct) -> u64 {
        if self.woken == 0 {
            self.woken = match self.queue_time(next, TASK_LAST_QUEUED_OFFSET.load()) {
                Some(woken) => woken,
                None => self.now(),
            };
        }
        self.woken
    }

    /// When `task`, this CPU's running thread (the switch's prev), was switched in: its
    /// `sched_info.last_arrival`, by this run queue's clock. None where that is not known.
    #[inline(always)]
    fn arrived_at(&mut self, task: *mut task_struct) -> Option<u64> {
        self.queue_time(task, TASK_LAST_ARRIVAL_OFFSET.load())
    }

    /// The run-queue time `task` keeps at offset `field` (0: this kernel has none), moved
    /// to `CLOCK_MONOTONIC`. None where unknown: no offset measured, the time not set (0),
    /// or another CPU's queue clock a little ahead of this switch.
    #[inline(always)]
    fn queue_time(&mut self, task: *mut task_struct, field: u64) -> Option<u64> {
        let now = self.now();
        let offset = self.offset?;
        if field == 0 {
            return None;
        }
        // SAFETY: a BTF task pointer from the tracepoint; an 8-byte member, as in
        // `task_field_u64`.
        let queue_time = unsafe { task_field_u64(task, field) };
        let at = queue_time.wrapping_add(offset);
        (queue_time != 0 && (now.wrapping_sub(at) as i64) >= 0).then_some(at)
    }
}

/// The clock of `task`'s run queue (`sched_clock` at its last update: at a switch, the
/// start of that `__schedule`); 0 where this kernel has no path to it.
///
/// # Safety
/// As for [`task_field`]. The loads are through BTF pointers the verifier types member by
/// member, and a fault reads 0.
#[inline(always)]
unsafe fn run_queue_clock(task: *mut task_struct) -> u64 {
    let task_cfs_rq = TASK_CFS_RQ_OFFSET.load();
    if task_cfs_rq == 0 {
        return 0;
    }
    // SAFETY: as the caller promises.
    unsafe {
        let cfs_rq = *task.cast::<u8>().add(task_cfs_rq as usize).cast::<*const u8>();
        if cfs_rq.is_null() {
            return 0;
        }
        let rq = *cfs_rq.add(CFS_RQ_RQ_OFFSET.load() as usize).cast::<*const u8>();
        if rq.is_null() {
            return 0;
        }
        *rq.add(RQ_CLOCK_OFFSET.load() as usize).cast::<u64>()
    }
}

/// Measures `SWITCH_CLOCK` at a switch of the tracer's own (`task` is one of its tasks);
/// see [`tracer_common::SwitchClock`].
#[inline(never)]
fn measure_switch_clock(task: *mut task_struct) {
    // SAFETY: a task of the switch, a BTF pointer.
    let rq_clock = unsafe { run_queue_clock(task) };
    if rq_clock == 0 {
        return;
    }
    let now = now_ns();
    let Some(clock) = SWITCH_CLOCK.get_ptr_mut(0) else { return };
    // SAFETY: the map's one value. Two CPUs measuring at once may lose a measure; the
    // offset is stored before the flag that says it is measured, each an aligned word.
    unsafe {
        let mut next = *clock;
        next.measure(now, now.wrapping_sub(rq_clock));
        (*clock).last_window_min = next.last_window_min;
        (*clock).window_min = next.window_min;
        (*clock).window_end_ns = next.window_end_ns;
        // Volatile stores keep their order (the bpf target has no fence to select).
        core::ptr::write_volatile(&mut (*clock).offset, next.offset);
        core::ptr::write_volatile(&mut (*clock).measured, 1);
    }
}

/// The 32-bit member (`pid_t`) of `task` at `offset`.
///
/// # Safety
/// `task` must be a BTF task pointer (a tp_btf argument). The offset is a constant of the
/// frozen read-only globals, so the verifier checks the plain load against the kernel's
/// BTF (a 4-byte member there) and makes it fault-safe.
#[inline(always)]
unsafe fn task_field(task: *mut task_struct, offset: u64) -> u32 {
    // SAFETY: as the caller promises.
    unsafe { *task.cast::<u8>().add(offset as usize).cast::<u32>() }
}

/// The 64-bit member (`unsigned long`) of `task` at `offset`.
///
/// # Safety
/// As for [`task_field`], with an 8-byte member.
#[inline(always)]
unsafe fn task_field_u64(task: *mut task_struct, offset: u64) -> u64 {
    // SAFETY: as the caller promises.
    unsafe { *task.cast::<u8>().add(offset as usize).cast::<u64>() }
}

/// Notes a wait when the current thread (`prev`, of the target) goes to sleep inside a
/// watched call.
#[inline(always)]
fn note_sleep(
    ctx: &BtfTracePointContext,
    task: *mut task_struct,
    tid: u32,
    word: Option<*mut u64>,
    clock: &mut SwitchTime,
) {
    // Sleeping states (include/linux/sched.h); a stopped or traced thread has neither
    // bit: it waits for a signal or a debugger, not for what its call waits on.
    const TASK_INTERRUPTIBLE: u32 = 0x1;
    const TASK_UNINTERRUPTIBLE: u32 = 0x2;
    let preempted: u64 = ctx.arg(0);
    let prev_state: u32 = ctx.arg(3);
    // Preempted (even between set_current_state() and schedule()), the thread stays
    // runnable: it waits for a CPU, not for an event.
    if preempted != 0 || prev_state & (TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE) == 0 {
        return;
    }
    // SAFETY: prev (the current task), a BTF pointer; its user registers, saved at
    // syscall entry.
    let regs = unsafe { bpf_task_pt_regs(task) } as *const pt_regs;
    // A sleep outside any syscall (a page fault) has orig_rax -1, which no kind matches.
    // The entry code sets rax to -ENOSYS and the call's return value replaces it: a sleep
    // on the way out of a call that has returned (memory.high throttling, task work) has
    // the call's number still in orig_rax but is not inside it.
    // SAFETY: a BTF pointer, as in `syscall_arg`.
    let (nr, rax) = unsafe { ((*regs).orig_rax as i64, (*regs).rax as i64) };
    const ENOSYS: i64 = 38;
    if rax != -ENOSYS {
        return;
    }
    let Ok(Some((kind, object))) = classify_syscall(nr, |n| Ok::<_, ()>(syscall_arg(regs, n)))
    else {
        return;
    };
    count(Counter::WaitsStarted);
    let start_ns = clock.now();
    let copy_kept = keeps_sleep_copy(kind, nr, regs, tid);
    let mut span_sample = copy_kept && keep_sleep_stack(tid, start_ns, regs);
    let in_word = word.is_some_and(|word| note_in_word(word, tid, kind, start_ns, span_sample));
    if !in_word {
        // A wake queued to another CPU cannot reach task storage (`tracer_queued_wake`):
        // the wait may then end at its switch in, where its memory may not be readable,
        // and its waker is told by this copy's start.
        if !copy_kept {
            span_sample = keep_sleep_stack(tid, start_ns, regs);
        }
        // SAFETY: the entry is this thread's own; it is asleep from here until its wake.
        let Some(entry) = (unsafe { IN_FLIGHT.get_or_create(task) }) else {
            count(Counter::InFlightMapFull);
            return;
        };
        // SAFETY: as above; `task` is a BTF task pointer.
        unsafe {
            *entry = InFlightWait {
                start_ns,
                object,
                switches: switches_of(task),
                kind: kind as u32,
                tid,
                flags: if span_sample { WAIT_SPAN_SAMPLE } else { 0 },
                _pad: 0,
            }
        };
    }
}

/// Ends the wait that `prev`'s WAIT_STARTS `word` still holds as `prev`, a thread of the
/// target, switches out: it has been running, so that wait ended at a switch in no
/// tracepoint saw (see Counter::WaitsDiscarded). A short one is timed to that switch in
/// (the thread's last arrival on this CPU); a long one, whose registers and stack have
/// moved on since, is left out and counted.
#[inline(always)]
fn end_unseen_wait(prev: *mut task_struct, tid: u32, word: *mut u64, clock: &mut SwitchTime) {
    // SAFETY: a value of WAIT_STARTS, an aligned u64.
    let seen = unsafe { *word };
    if !matches!(WaitSlot::read(seen, tid), WaitSlot::InProgress { .. }) {
        return;
    }
    // Swapped, not stored: a wake of the running thread may end the same word meanwhile.
    if !swap_word(word, seen, WaitSlot::ended_word(tid)) {
        return;
    }
    let Some(arrived) = clock.arrived_at(prev) else {
        count(Counter::WaitsDiscarded);
        return;
    };
    match WaitSlot::verdict(seen, tid, MIN_WAIT_NS.load(), || arrived) {
        // No span sample: the sleep copy's registers are gone with the wait.
        WordVerdict::Short { kind, start_ns, elapsed_ns, .. } => {
            end_short_wait(prev, tid, kind, start_ns, elapsed_ns, false);
        }
        _ => count(Counter::WaitsDiscarded),
    }
}

/// Notes thread `tid`'s wait in its WAIT_STARTS `word`, unless another thread's wait in
/// progress holds the word (then false: the wait goes to task storage).
#[inline(always)]
fn note_in_word(
    word: *mut u64,
    tid: u32,
    kind: WaitKind,
    start_ns: u64,
    span_sample: bool,
) -> bool {
    // SAFETY: a value of WAIT_STARTS, an aligned u64.
    let seen = unsafe { *word };
    if WaitSlot::held_by_another(seen, tid) {
        return false;
    }
    // Swapped, not stored: another thread of the slot may be taking the word on another
    // CPU. Once a wait holds it, only that wait's end rewrites it.
    swap_word(word, seen, WaitSlot::in_progress_word(tid, kind as u32, start_ns, span_sample))
}

/// Replaces `word` (of WAIT_STARTS, or PASS_STATE's last pass time) by `new` if it still
/// holds `seen`; whether it did.
#[inline(always)]
fn swap_word(word: *mut u64, seen: u64, new: u64) -> bool {
    // SAFETY: an aligned u64 map value; every other access to the word is a whole aligned
    // load or store.
    let (_, swapped) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(word, seen, new)
    };
    swapped
}

/// The wait of `task` (asleep in it, not the current task) that its WAIT_STARTS word holds,
/// begun at `start_ns`: what is waited on is read again from the call's arguments.
#[inline(always)]
fn wait_from_word(task: *mut task_struct, tid: u32, kind: u32, start_ns: u64) -> InFlightWait {
    // SAFETY: a BTF task pointer; its user registers, saved when it entered the call.
    wait_from_regs(unsafe { bpf_task_pt_regs(task) } as *const pt_regs, tid, kind, start_ns)
}

/// As [`wait_from_word`], from the sleeper's saved user registers `regs` (a BTF pointer,
/// or a copy on the probe's stack).
#[inline(always)]
fn wait_from_regs(regs: *const pt_regs, tid: u32, kind: u32, start_ns: u64) -> InFlightWait {
    // SAFETY: as the caller promises; a BTF pointer's loads are fault-checked.
    let nr = unsafe { (*regs).orig_rax as i64 };
    let object = match classify_syscall(nr, |n| Ok::<_, ()>(syscall_arg(regs, n))) {
        Ok(Some((_, object))) => object,
        _ => 0,
    };
    InFlightWait { start_ns, object, switches: 0, kind, tid, flags: 0, _pad: 0 }
}

/// Whether thread `tid`'s sleep in a wait of `kind` keeps a copy of its stack: when the
/// wait is likely to end where the sleeper's memory cannot be read.
#[inline(always)]
fn keeps_sleep_copy(kind: WaitKind, nr: i64, regs: *const pt_regs, tid: u32) -> bool {
    if woken_from_outside(kind, nr, regs) {
        return true;
    }
    // Without the wake probe, even a wait a thread of the target ends is read where its
    // thread is switched back in: copied, unless the thread's waits end short.
    WAKES_ATTACHED.load() == 0 && ShortRun::keeps_copy(short_run(tid).map_or(0, |run| *run))
}

/// Thread `tid`'s slot of SHORT_RUNS.
#[inline(always)]
fn short_run(tid: u32) -> Option<&'static mut u32> {
    // SAFETY: an array value, a plain aligned u32; threads sharing the slot only share a
    // guess (see `ShortRun`).
    SHORT_RUNS.get_ptr_mut(tid % WAIT_START_SLOTS).map(|run| unsafe { &mut *run })
}

/// Notes that thread `tid`'s wait ended, `long` or not, for its next sleep's guess
/// (`keeps_sleep_copy`).
#[inline(always)]
fn note_wait_ended(tid: u32, long: bool) {
    if WAKES_ATTACHED.load() == 0
        && let Some(run) = short_run(tid)
    {
        *run = ShortRun::after(*run, long);
    }
}

/// Whether a wait is likely ended by something other than a thread of the target (a
/// socket's peer or the network, a timer, another process sharing a futex), where the
/// sleeper's memory cannot be read. An untimed wait on a process-private futex is woken by
/// the lock's or condition's other users, in the process.
#[inline(always)]
fn woken_from_outside(kind: WaitKind, nr: i64, regs: *const pt_regs) -> bool {
    // FUTEX_PRIVATE_FLAG in futex(2)'s op, FUTEX2_PRIVATE in futex_wait(2)'s flags: the
    // same bit (include/uapi/linux/futex.h).
    const PRIVATE: u64 = 128;
    if kind != WaitKind::Futex {
        return true;
    }
    // futex(uaddr, op, val, timeout, ...), futex_wait(uaddr, val, mask, flags, timeout,
    // clock); futex_waitv's flags are per waiter, in memory: taken as shared.
    let (flags, timeout) = match nr {
        syscall_nr::FUTEX => (syscall_arg(regs, 1), syscall_arg(regs, 3)),
        syscall_nr::FUTEX_WAIT => (syscall_arg(regs, 3), syscall_arg(regs, 4)),
        _ => return true,
    };
    timeout != 0 || flags & PRIVATE == 0
}

/// Thread `tid`'s SLEEP_STACKS slot, made when it has none; None when the map refuses.
#[inline(always)]
fn sleep_stack_slot(tid: u32) -> Option<*mut SleepStack> {
    if let Some(slot) = SLEEP_STACKS.get_ptr_mut(tid) {
        return Some(slot);
    }
    let scratch = SLEEP_STACK_SCRATCH.get_ptr(0)?;
    // SAFETY: a per-CPU array value of SleepStack size; its contents are rewritten by the
    // caller, once in the map. By reference: by value, 16 KiB would be copied onto the
    // 512-byte BPF stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    SLEEP_STACKS.insert(tid, unsafe { &*scratch }, 0).ok()?;
    SLEEP_STACKS.get_ptr_mut(tid)
}

/// Copies the current thread's user stack, whose registers are `regs`, into its
/// SLEEP_STACKS slot: as much as its last walk from the same registers read, else all
/// `STACK_COPY_BYTES`. True when the copy is to be sent even if the wait ends short, for
/// userspace to learn how much of it a walk reads (see `SleepStack::whole_copies`).
#[inline(always)]
fn keep_sleep_stack(tid: u32, start_ns: u64, regs: *const pt_regs) -> bool {
    // SAFETY: a BTF pointer, as in `syscall_arg`.
    let (ip, sp, bp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
    // SAFETY: a value of the map, read in place; userspace may rewrite it meanwhile, and
    // a torn read only makes the registers differ (or a walk run off the copy: counted,
    // and that span forgotten).
    let asked = match unsafe { STACK_SPANS.get(tid) } {
        Some(spans) => spans.copy_len(ip, sp, bp),
        None => STACK_COPY_BYTES as u32,
    };
    let Some(slot) = sleep_stack_slot(tid) else { return false };
    // SAFETY: a map value of SleepStack size, this thread's; only its own sleeps write it.
    unsafe {
        (*slot).start_ns = start_ns;
        (*slot).asked = asked;
        let len = copy_user_stack_part(&mut (*slot).stack, sp, asked);
        (*slot).len = len;
        count(Counter::SleepCopies);
        if asked != STACK_COPY_BYTES as u32 || len == 0 {
            return false;
        }
        count(Counter::SleepCopiesWhole);
        let whole_copies = (*slot).whole_copies.wrapping_add(1);
        (*slot).whole_copies = whole_copies;
        is_span_sample(whole_copies)
    }
}

/// Copies `asked` bytes of the user stack from `sp`, or as `copy_user_stack` does when
/// that is the whole copy or fails (the end of the mapping is nearer).
#[inline(always)]
fn copy_user_stack_part(stack: &mut [u8; STACK_COPY_BYTES], sp: u64, asked: u32) -> u32 {
    // The mask bounds the length for the verifier; a whole copy masks to 0.
    let part = asked as usize & (STACK_COPY_BYTES - 1);
    if part > 0 && read_user(stack.as_mut_ptr(), part, sp) {
        return part as u32;
    }
    copy_user_stack(stack, sp)
}

/// Ends the wait of `next`, a thread of the target being switched in, unless its wake
/// already did. `prev_shares_memory`: the current task (`prev`) shares `next`'s memory.
#[inline(always)]
fn end_at_switch_in(next: *mut task_struct, prev_shares_memory: bool, clock: &mut SwitchTime) {
    // SAFETY: a BTF task pointer from the tracepoint.
    let tid = unsafe { task_field(next, TASK_PID_OFFSET.load()) };
    let Some(word) = wait_word(tid) else { return };
    // SAFETY: a value of WAIT_STARTS; `next` is not running, so only its wake could
    // rewrite the word meanwhile, and that wake is over.
    match WaitSlot::verdict(unsafe { *word }, tid, MIN_WAIT_NS.load(), || clock.woken_at(next)) {
        WordVerdict::NoWait => return,
        WordVerdict::Short { kind, start_ns, elapsed_ns, span_sample } => {
            // SAFETY: as above.
            unsafe { *word = WaitSlot::ended_word(tid) };
            end_short_wait(next, tid, kind, start_ns, elapsed_ns, span_sample);
            return;
        }
        WordVerdict::Long { kind, start_ns, .. } => {
            // SAFETY: as above.
            unsafe { *word = WaitSlot::ended_word(tid) };
            let wait = wait_from_word(next, tid, kind, start_ns);
            end_wait(next, &wait, clock.woken_at(next), stack_source(prev_shares_memory));
            return;
        }
        WordVerdict::AskTaskStorage => {}
    }
    // SAFETY: a BTF task pointer from the tracepoint.
    let Some(entry) = (unsafe { IN_FLIGHT.get(next) }) else {
        return;
    };
    // SAFETY: `next` is not running: its own probes do not write the entry meanwhile.
    let wait = unsafe { *entry };
    // SAFETY: as above.
    if !wait.in_progress(unsafe { switches_of(next) }) {
        return;
    }
    // SAFETY: as above.
    unsafe { (*entry).start_ns = 0 };
    // A wake queued to its CPU may have copied its stack (`keep_queued_wake_copy`).
    let source = match prev_shares_memory {
        true => StackSource::Memory,
        false => StackSource::SleepOrQueuedCopy,
    };
    end_wait(next, &wait, clock.woken_at(next), source);
}

/// Where the stack of a wait that ends at a switch in is read: in memory when the thread
/// switched out shares it, else the copy kept at the sleep.
#[inline(always)]
fn stack_source(prev_shares_memory: bool) -> StackSource {
    if prev_shares_memory { StackSource::Memory } else { StackSource::SleepCopy }
}

/// Ends thread `tid`'s wait of `kind` (of `task`, asleep), begun at `start_ns` and under
/// the threshold: adds it to its kind's totals, and sends its sleep copy as a span sample
/// when its sleep asked for one.
#[inline(always)]
fn end_short_wait(
    task: *mut task_struct,
    tid: u32,
    kind: u32,
    start_ns: u64,
    duration_ns: u64,
    span_sample: bool,
) {
    add_short_wait(tid, kind, duration_ns);
    if span_sample {
        // SAFETY: a BTF task pointer; its user registers, saved when it entered the call.
        let regs = unsafe { bpf_task_pt_regs(task) } as *const pt_regs;
        send_span_sample(task, regs, &bare_wait(tid, kind, start_ns), duration_ns);
    }
}

/// Adds thread `tid`'s wait of `kind`, `duration_ns` long and under the threshold, to its
/// kind's totals.
#[inline(always)]
fn add_short_wait(tid: u32, kind: u32, duration_ns: u64) {
    count(Counter::ShortWaits);
    note_wait_ended(tid, false);
    if let Some(totals) = SHORT_WAITS.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, as in `count`.
        unsafe {
            (*totals).count += 1;
            (*totals).total_ns += duration_ns;
        }
    }
}

/// Where a long wait's user stack is read from when it ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StackSource {
    /// The current task shares the sleeper's memory: read it there, as it slept.
    Memory,
    /// The copy `keep_sleep_stack` took, if it belongs to this wait.
    SleepCopy,
    /// As `SleepCopy`, or the copy a queued wake took (`keep_queued_wake_copy`): for a
    /// wait in task storage.
    SleepOrQueuedCopy,
}

/// Ends `wait`, the wait of `task` (asleep, not the current task): a short one is added to
/// its kind's totals, a long one is sent with its stack.
#[inline(always)]
fn end_wait(task: *mut task_struct, wait: &InFlightWait, end_ns: u64, source: StackSource) {
    let duration_ns = end_ns.saturating_sub(wait.start_ns);
    if duration_ns < MIN_WAIT_NS.load() {
        let span_sample = wait.flags & WAIT_SPAN_SAMPLE != 0;
        end_short_wait(task, wait.tid, wait.kind, wait.start_ns, duration_ns, span_sample);
        return;
    }
    // SAFETY: a BTF task pointer; its user registers, saved when it entered the call.
    let regs = unsafe { bpf_task_pt_regs(task) } as *const pt_regs;
    send_long_wait(task, regs, wait, duration_ns, source);
}

/// Sends `wait`, the wait of `task` (asleep, not the current task) whose saved user
/// registers are `regs` (a BTF pointer, or a copy on the probe's stack), `duration_ns`
/// long and over the threshold, with its stack.
#[inline(always)]
fn send_long_wait(
    task: *mut task_struct,
    regs: *const pt_regs,
    wait: &InFlightWait,
    duration_ns: u64,
    source: StackSource,
) {
    note_wait_ended(wait.tid, true);
    let Some(mut entry) = WAITS.reserve::<WaitRecord>(0) else {
        count(Counter::RingBufferFull);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to a reserved ring-buffer slot of WaitRecord size; `regs`
    // are `task`'s, as the caller promises.
    unsafe {
        // A long wait is reported; it was never a span sample (its walk learns the span).
        let flags = wait.flags & !WAIT_SPAN_SAMPLE;
        let (len, asked) = fill_wait_record(record, task, regs, wait, duration_ns, flags, source);
        if len == 0 {
            count(Counter::StackUnreadable);
        } else if len < asked {
            count(Counter::StackShortened);
        } else if (asked as usize) < STACK_COPY_BYTES {
            count(Counter::StackPartial);
        }
    }
    count(Counter::LongWaits);
    entry.submit(wake_flags(&WAITS, WAITS_WAKE_AT_BYTES.load()));
}

/// Writes every field of `record` for `wait`, the wait of `task` (asleep, not the current
/// task), `duration_ns` long, with `flags`; returns the stack copy's length and the length
/// asked for.
///
/// # Safety
/// `record` must point to a reserved ring-buffer slot of WaitRecord size; `regs` must be
/// `task`'s user registers, saved when it entered the call it sleeps in (a BTF pointer, or
/// a copy on the probe's stack); `task` is only read through a helper (its name).
#[inline(always)]
unsafe fn fill_wait_record(
    record: *mut WaitRecord,
    task: *mut task_struct,
    regs: *const pt_regs,
    wait: &InFlightWait,
    duration_ns: u64,
    flags: u32,
    source: StackSource,
) -> (u32, u32) {
    // SAFETY: as the caller promises.
    unsafe {
        let (ip, sp, bp) = ((*regs).rip, (*regs).rsp, (*regs).rbp);
        (*record).tid = wait.tid;
        (*record).kind = wait.kind;
        (*record).start_ns = wait.start_ns;
        (*record).duration_ns = duration_ns;
        (*record).object = wait.object;
        (*record).ip = ip;
        (*record).sp = sp;
        (*record).bp = bp;
        (*record).comm = bpf_probe_read_kernel(
            task.cast::<u8>().add(TASK_COMM_OFFSET.load() as usize).cast::<[u8; 16]>(),
        )
        .unwrap_or([0; 16]);
        let (len, asked) = match source {
            StackSource::Memory => {
                (copy_user_stack(&mut (*record).stack, sp), STACK_COPY_BYTES as u32)
            }
            StackSource::SleepCopy => copy_sleep_stack(&mut (*record).stack, wait, false),
            StackSource::SleepOrQueuedCopy => copy_sleep_stack(&mut (*record).stack, wait, true),
        };
        (*record).stack_len = len;
        (*record).object_inode = match WaitKind::from_u32(wait.kind) {
            Some(WaitKind::Futex | WaitKind::Poll) | None => 0,
            Some(_) => descriptor_inode(task, wait.object),
        };
        (*record)._pad = 0;
        // Only a sleep copy's walk sizes later sleep copies.
        let from_copy = source != StackSource::Memory && len > 0;
        (*record).flags = if from_copy { flags | WAIT_STACK_FROM_SLEEP_COPY } else { flags };
        (len, asked)
    }
}

/// The inode number of descriptor `fd` of `task` (asleep in a call on it, so the
/// descriptor is still the one the call was made on), through the path the loader
/// found; 0 where it cannot be read. Each step by helper: the table's pointers are not
/// ones the verifier types.
///
/// # Safety
/// `task` must be a task pointer; every read is fault-checked.
#[inline(always)]
unsafe fn descriptor_inode(task: *mut task_struct, fd: u64) -> u32 {
    let files_offset = TASK_FILES_OFFSET.load();
    if files_offset == 0 {
        return 0;
    }
    // SAFETY: as the caller promises.
    let ino = unsafe { descriptor_ino(task as u64 + files_offset, fd) };
    // Socket and pipe inodes come from get_next_ino(), an unsigned int.
    ino.and_then(|ino| u32::try_from(ino).ok()).unwrap_or(0)
}

/// `descriptor_inode`'s walk from the task's `files` member, at `files_at`. Inlined, as
/// every step is, into each probe that sends a wait: a call of its own would add its
/// frame to theirs, past the verifier's 512 bytes in the queued-wake probe.
///
/// # Safety
/// Every read is fault-checked.
#[inline(always)]
unsafe fn descriptor_ino(files_at: u64, fd: u64) -> Option<u64> {
    let word = |at: u64| kernel_u64(at).ok().filter(|&word| word != 0);
    let files = word(files_at)?;
    let table = word(files + FILES_FDT_OFFSET.load())?;
    let max_fds = kernel_u32(table + FDTABLE_MAX_FDS_OFFSET.load()).ok()?;
    if fd >= u64::from(max_fds) {
        return None;
    }
    let descriptors = word(table + FDTABLE_FD_OFFSET.load())?;
    let file = word(descriptors + fd * 8)?;
    let inode = word(file + FILE_INODE_OFFSET.load())?;
    kernel_u64(inode + INODE_INO_OFFSET.load()).ok()
}

/// Thread `tid`'s wait of `kind` begun at `start_ns`, without what only a reported wait
/// carries (its object, its switch count): what a span sample or a waker's record names.
#[inline(always)]
fn bare_wait(tid: u32, kind: u32, start_ns: u64) -> InFlightWait {
    InFlightWait { start_ns, object: 0, switches: 0, kind, tid, flags: 0, _pad: 0 }
}

/// Sends the sleep copy of `wait` (its thread, kind and start; `task`, asleep, whose
/// saved user registers are `regs`), which ended short, as a span sample
/// (`WAIT_SPAN_SAMPLE`): userspace walks it to learn how much of the thread's stack later
/// copies need. Only some of a thread's whole copies are sent (`is_span_sample`).
#[inline(never)]
fn send_span_sample(
    task: *mut task_struct,
    regs: *const pt_regs,
    wait: &InFlightWait,
    duration_ns: u64,
) {
    let Some(mut entry) = WAITS.reserve::<WaitRecord>(0) else {
        count(Counter::SpanSamplesDropped);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: a reserved slot of WaitRecord size; `regs` are `task`'s (a BTF pointer or a
    // copy on the caller's stack), as the caller promises; `task` is only read through a
    // helper (its name).
    let (len, _) = unsafe {
        let flags = WAIT_SPAN_SAMPLE;
        fill_wait_record(record, task, regs, wait, duration_ns, flags, StackSource::SleepCopy)
    };
    // The copy is gone (its slot taken by another thread): nothing to walk.
    if len == 0 {
        entry.discard(0);
        count(Counter::SpanSamplesDropped);
        return;
    }
    count(Counter::SpanSamples);
    entry.submit(wake_flags(&WAITS, WAITS_WAKE_AT_BYTES.load()));
}

/// Copies the stack kept at `wait`'s sleep into `stack`; returns its length (0 when no
/// copy of this wait is kept: never taken, or its slot reused by another thread) and the
/// length the probe asked for when it took it. `queued`: a copy its queued wake took
/// (`QUEUED_WAKE_COPY`) is this wait's too.
#[inline(always)]
fn copy_sleep_stack(
    stack: &mut [u8; STACK_COPY_BYTES],
    wait: &InFlightWait,
    queued: bool,
) -> (u32, u32) {
    const NONE: (u32, u32) = (0, STACK_COPY_BYTES as u32);
    let Some(slot) = SLEEP_STACKS.get_ptr(wait.tid) else {
        return NONE;
    };
    // SAFETY: a map value of SleepStack size; its thread is asleep, so nothing rewrites it
    // meanwhile.
    unsafe {
        let start_ns = (*slot).start_ns;
        if start_ns != wait.start_ns && !(queued && start_ns == QUEUED_WAKE_COPY) {
            return NONE;
        }
        let copied = generated::bpf_probe_read_kernel(
            stack.as_mut_ptr().cast(),
            STACK_COPY_BYTES as u32,
            (*slot).stack.as_ptr().cast(),
        );
        if copied == 0 { ((*slot).len, (*slot).asked) } else { NONE }
    }
}

/// Copies the user stack from `sp` upwards; returns the bytes copied.
///
/// A read that crosses the end of the stack mapping fails whole. That end is page
/// aligned, so when the full copy fails the readable length is the rest of `sp`'s page
/// plus a whole number of pages: trying those lengths, longest first, copies all there is.
#[inline(always)]
fn copy_user_stack(stack: &mut [u8; STACK_COPY_BYTES], sp: u64) -> u32 {
    const PAGE: usize = 4096;
    if read_user(stack.as_mut_ptr(), STACK_COPY_BYTES, sp) {
        return STACK_COPY_BYTES as u32;
    }
    let rest_of_page = PAGE - (sp as usize & (PAGE - 1));
    let mut pages = STACK_COPY_BYTES / PAGE;
    while pages > 0 {
        pages -= 1;
        let len = rest_of_page + pages * PAGE;
        // The full length already failed (sp page aligned makes the first try equal it).
        if len < STACK_COPY_BYTES && read_user(stack.as_mut_ptr(), len, sp) {
            return len as u32;
        }
    }
    0
}

#[inline(always)]
fn read_user(dst: *mut u8, len: usize, src: u64) -> bool {
    // SAFETY: `dst` has at least STACK_COPY_BYTES >= len bytes; the helper faults
    // safely on unmapped user memory and returns an error.
    unsafe { bpf_probe_read_user(dst.cast(), len as u32, src as *const _) == 0 }
}

/// A thread of the target is woken. Attached to `sched_wakeup`: in the waker's context,
/// unless the wake was queued to the wakee's CPU (`tracer_queued_wake` took that one in
/// the waker's context; this is its second half, run there). Where the kernel cannot name
/// queued wakes, `tracer_waking` at `sched_waking` instead, which always fires in the
/// waker's context but costs a ping-pong on one CPU several times more (see the loader's
/// `attach_wait_probes`).
///
/// A short futex wait ends here. A futex wait that has lasted the threshold ends here when
/// a thread of the target wakes it, read through the waker's view of the shared memory; a
/// futex wake also sends the waker's own stack. Other waits end at their switch in.
/// Arguments: (struct task_struct *p), the task being woken (include/trace/events/sched.h).
#[btf_tracepoint(function = "sched_wakeup")]
pub fn tracer_wakeup(ctx: BtfTracePointContext) -> u32 {
    let wakee: *mut task_struct = ctx.arg(0);
    // The wake's run queue (the wakee's, whose lock is held) has just read its clock: the
    // probe loads it, as a switch does, where the clock helper would cost a futex
    // ping-pong a few points of its handoffs.
    let _ = try_wakeup(wakee, SwitchTime { task: wakee, now: 0, offset: None, woken: 0 });
    0
}

/// `tracer_wakeup` at `sched_waking`, the fallback (see the loader's
/// `attach_wait_probes`): there the wake's run queue clock is not fresh, so the probe
/// reads the clock.
#[btf_tracepoint(function = "sched_waking")]
pub fn tracer_waking(ctx: BtfTracePointContext) -> u32 {
    let _ = try_wakeup(ctx.arg(0), LazyClock(0));
    0
}

#[inline(always)]
fn try_wakeup(wakee: *mut task_struct, mut clock: impl Clock) -> Result<(), i32> {
    // The wakee first, by a plain load: every wake of the machine runs this, and for
    // other processes' wakes it ends here without a helper call.
    // SAFETY: a BTF task pointer from the tracepoint; see `task_field`.
    if unsafe { task_field(wakee, TASK_TGID_OFFSET.load()) } != TARGET_TGID.load() {
        return Ok(());
    }
    // SAFETY: as above.
    let tid = unsafe { task_field(wakee, TASK_PID_OFFSET.load()) };
    if let Some(queued) = QUEUED_WAKES.get_ptr_mut(tid % WAIT_START_SLOTS) {
        // SAFETY: an array value, an aligned u32; see `QUEUED_WAKES`.
        unsafe {
            if *queued == tid {
                *queued = 0;
                return Ok(());
            }
        }
    }
    let word = wait_word(tid).ok_or(0)?;
    // SAFETY: a value of WAIT_STARTS; the wakee is not running (its wakes are serialized
    // by its pi_lock, its switch in by its run queue's lock, held here), so only this
    // program writes its word meanwhile.
    let seen = unsafe { *word };
    let end_short = |kind, start_ns, elapsed_ns, span_sample| {
        end_short_wait(wakee, tid, kind, start_ns, elapsed_ns, span_sample)
    };
    let Some((kind, start_ns, _)) = judge_wake(tid, word, seen, &mut clock, end_short)? else {
        return Ok(());
    };
    // A wakee still on a CPU has not finished going to sleep (or is woken before it
    // sleeps, its last wait's entry not yet replaced): its wait, if any, is not long.
    // SAFETY: as above.
    if unsafe { task_field(wakee, TASK_ON_CPU_OFFSET.load()) } != 0 {
        return Ok(());
    }
    let Some((waker, waker_tid)) = waker_of(tid) else {
        return Ok(());
    };
    let now = clock.now();
    let wait = match kind {
        Some(kind) => {
            // SAFETY: as above.
            unsafe { *word = WaitSlot::ended_word(tid) };
            wait_from_word(wakee, tid, kind, start_ns)
        }
        None => {
            // SAFETY: a BTF task pointer from the tracepoint.
            let Some(entry) = (unsafe { IN_FLIGHT.get(wakee) }) else {
                return Ok(());
            };
            // SAFETY: the wakee is asleep: its own probes do not write the entry meanwhile.
            let wait = unsafe { *entry };
            // As for a wait in the word: only a futex wait's end is the waker's.
            if wait.kind != WaitKind::Futex as u32 {
                return Ok(());
            }
            // SAFETY: as above.
            if !wait.in_progress(unsafe { switches_of(wakee) })
                || under_threshold(wait.start_ns, now)
            {
                return Ok(());
            }
            // A queued wake's second half whose mark another thread of its QUEUED_WAKES
            // slot overwrote: its first half took the copy and the waker, and the current
            // task is not the waker. The wait ends at its switch in.
            if queued_wake_took(tid) {
                return Ok(());
            }
            // SAFETY: as above.
            unsafe { (*entry).start_ns = 0 };
            wait
        }
    };
    // The waker first: userspace joins a record to the waker it has read before it.
    send_waker(waker, waker_tid, &wait);
    end_wait(wakee, &wait, now, StackSource::Memory);
    Ok(())
}

/// A wake queued to the wakee's CPU (`csd_queue_cpu`, in the waker's context): the kernel
/// does so when that CPU is idle or shares no cache with the waker's, and then runs the
/// wake's second half (`sched_wakeup`) there, where the waker is gone. This takes the
/// wake as `tracer_wakeup` would, and marks it in `QUEUED_WAKES` for that second half.
/// It runs for every function call queued to another CPU; only for a wake's (its node's
/// type `CSD_TYPE_TTWU`) is the task, whose `wake_entry` the node is, read, by helper: the
/// pointer is arithmetic, not one the verifier types.
/// Arguments: (unsigned int cpu, unsigned long callsite, smp_call_func_t func,
/// call_single_data_t *csd) (include/trace/events/csd.h).
#[btf_tracepoint(function = "csd_queue_cpu")]
pub fn tracer_queued_wake(ctx: BtfTracePointContext) -> u32 {
    let _ = try_queued_wake(&ctx);
    0
}

fn try_queued_wake(ctx: &BtfTracePointContext) -> Result<(), i32> {
    // The node's type (include/linux/smp_types.h): the verifier lets no program read the
    // function argument, whose type is a function's.
    const CSD_FLAG_TYPE_MASK: u32 = 0xf0;
    const CSD_TYPE_TTWU: u32 = 0x30;
    // `u_flags` follows the node's `llist_node` (one pointer), in every kernel that has
    // the tracepoint.
    const NODE_FLAGS_OFFSET: usize = 8;
    let node: *const u8 = ctx.arg(3);
    // SAFETY: a BTF pointer from the tracepoint (`struct __call_single_data`, whose
    // `node.u_flags` this is): a fault-checked load.
    let flags = unsafe { *node.add(NODE_FLAGS_OFFSET).cast::<u32>() };
    if flags & CSD_FLAG_TYPE_MASK != CSD_TYPE_TTWU {
        return Ok(());
    }
    let wakee = (node as u64).wrapping_sub(TASK_WAKE_ENTRY_OFFSET.load());
    let field = |offset: u64| wakee.wrapping_add(offset) as *const u32;
    // SAFETY: the helper faults safely; a queued wake's node is inside its task.
    if unsafe { bpf_probe_read_kernel(field(TASK_TGID_OFFSET.load())) } != Ok(TARGET_TGID.load()) {
        return Ok(());
    }
    // SAFETY: as above.
    let tid = unsafe { bpf_probe_read_kernel(field(TASK_PID_OFFSET.load())) }?;
    // Before llist_add queues the wake: its second half, on the wakee's CPU, sees the mark.
    if let Some(queued) = QUEUED_WAKES.get_ptr_mut(tid % WAIT_START_SLOTS) {
        // SAFETY: an array value, an aligned u32.
        unsafe { *queued = tid };
    }
    let word = wait_word(tid).ok_or(0)?;
    // SAFETY: as in `try_wakeup`: the wakee runs only after this wake's second half.
    let seen = unsafe { *word };
    // A span sample's registers are the sleeper's, read as below.
    let end_short = |kind, start_ns, elapsed_ns, span_sample| {
        add_short_wait(tid, kind, elapsed_ns);
        if span_sample {
            match queued_wakee_regs(wakee) {
                Ok(regs) => {
                    let wait = bare_wait(tid, kind, start_ns);
                    send_span_sample(wakee as *mut task_struct, &regs, &wait, elapsed_ns);
                }
                Err(_) => count(Counter::SpanSamplesDropped),
            }
        }
    };
    let mut clock = LazyClock(0);
    let Some((kind, start_ns, elapsed_ns)) = judge_wake(tid, word, seen, &mut clock, end_short)?
    else {
        return Ok(());
    };
    // SAFETY: as above.
    if unsafe { bpf_probe_read_kernel(field(TASK_ON_CPU_OFFSET.load())) }? != 0 {
        return Ok(());
    }
    let Some((waker, waker_tid)) = waker_of(tid) else {
        return Ok(());
    };
    let regs = queued_wakee_regs(wakee)?;
    let Some(kind) = kind else {
        // A wait in task storage, which only a task pointer the verifier types reaches: it
        // ends at its switch in, with this copy of its stack where its memory cannot be
        // read there (its sleep's copy may be partial, or an adopted wait's not yet in
        // place). Its start is the one its sleep's copy was kept with: a long futex wait's
        // waker is sent under it, for userspace to join to the wait's record.
        let kept_start_ns = keep_queued_wake_copy(tid, regs.rsp);
        let now = clock.now();
        if kept_start_ns != QUEUED_WAKE_COPY && !under_threshold(kept_start_ns, now) {
            let nr = regs.orig_rax as i64;
            if let Ok(Some((kind, _))) =
                classify_syscall(nr, |n| Ok::<_, ()>(syscall_arg(&regs, n)))
            {
                send_waker(waker, waker_tid, &bare_wait(tid, kind as u32, kept_start_ns));
            }
        }
        return Ok(());
    };
    // SAFETY: as above.
    unsafe { *word = WaitSlot::ended_word(tid) };
    let wait = wait_from_regs(&regs, tid, kind, start_ns);
    // The waker first, as in `try_wakeup`.
    send_waker(waker, waker_tid, &wait);
    send_long_wait(wakee as *mut task_struct, &regs, &wait, elapsed_ns, StackSource::Memory);
    Ok(())
}

/// The saved user registers of `wakee` (the task of a queued wake, an address the
/// verifier does not type), read from the current task's: they sit at the same place below
/// every task's kernel stack.
#[inline(always)]
fn queued_wakee_regs(wakee: u64) -> Result<pt_regs, i32> {
    // SAFETY: the helper returns the current task as a BTF pointer; the other reads fault
    // safely.
    unsafe {
        let current = bpf_get_current_task_btf();
        let current_regs = bpf_task_pt_regs(current) as u64;
        let current_stack = task_field_u64(current, TASK_STACK_OFFSET.load());
        let wakee_stack: u64 =
            bpf_probe_read_kernel(wakee.wrapping_add(TASK_STACK_OFFSET.load()) as *const u64)?;
        let at = current_regs.wrapping_sub(current_stack).wrapping_add(wakee_stack);
        bpf_probe_read_kernel(at as *const pt_regs)
    }
}

/// The `start_ns` of a SLEEP_STACKS copy that a queued wake took of a wait in task
/// storage (`keep_queued_wake_copy`): only such a wait's end takes it
/// (`StackSource::SleepOrQueuedCopy`).
const QUEUED_WAKE_COPY: u64 = u64::MAX;

/// Copies thread `tid`'s user stack from `sp` (read in the waker's memory, which it
/// shares) into its SLEEP_STACKS slot, marked `QUEUED_WAKE_COPY`; returns the start of
/// the wait whose sleep's copy the slot held (`QUEUED_WAKE_COPY` when none).
#[inline(never)]
fn keep_queued_wake_copy(tid: u32, sp: u64) -> u64 {
    let Some(slot) = sleep_stack_slot(tid) else { return QUEUED_WAKE_COPY };
    // SAFETY: a map value of SleepStack size, this thread's: it is asleep, so its own
    // sleeps do not write it meanwhile.
    unsafe {
        let kept_start_ns = (*slot).start_ns;
        (*slot).start_ns = QUEUED_WAKE_COPY;
        (*slot).asked = STACK_COPY_BYTES as u32;
        (*slot).len = copy_user_stack(&mut (*slot).stack, sp);
        // A slot just made holds no copy (0).
        if kept_start_ns == 0 { QUEUED_WAKE_COPY } else { kept_start_ns }
    }
}

/// Whether a queued wake took thread `tid`'s stack (`keep_queued_wake_copy`) since its
/// last sleep: asked only of a wait in task storage, whose sleep always keeps a copy.
#[inline(never)]
fn queued_wake_took(tid: u32) -> bool {
    // SAFETY: a map value of SleepStack size; only its start is read.
    SLEEP_STACKS.get_ptr(tid).is_some_and(|slot| unsafe { (*slot).start_ns } == QUEUED_WAKE_COPY)
}

/// What a wake of thread `tid` makes of the wait its `word` holds (`seen`): a short futex
/// wait ends here, by the word alone, whoever the waker (`end_short` takes its kind, start,
/// length and whether it is a span sample; the switch in then finds it ended). Some when
/// the wait may be long and its waker is to be looked at: its kind, start and time so far
/// when it is in the word, None (and zeros) when it may be in task storage. `clock` is read
/// only for a wait in progress: a wake of a thread in no watched wait reads none.
#[inline(always)]
fn judge_wake(
    tid: u32,
    word: *mut u64,
    seen: u64,
    clock: &mut impl Clock,
    end_short: impl FnOnce(u32, u64, u64, bool),
) -> Result<Option<(Option<u32>, u64, u64)>, i32> {
    // Only a futex wait has a waker to take. Any other wait ends at its switch in, which
    // times it without reading a clock and has the stack copy its sleep kept (see
    // `woken_from_outside`): a socket's wakes, from the network or a peer, read nothing.
    // (The word read once: a second read's tag test, which the verifier cannot tell the
    // first decided, would leave a path on which the compiled code spills an unset
    // register, and the verifier rejects the program.)
    let slot = WaitSlot::read(seen, tid);
    if let WaitSlot::InProgress { kind, .. } = slot
        && kind != WaitKind::Futex as u32
    {
        return Ok(None);
    }
    match slot.judge(MIN_WAIT_NS.load(), || clock.now()) {
        WordVerdict::Short { kind, start_ns, elapsed_ns, span_sample } => {
            // SAFETY: a value of WAIT_STARTS, which the caller read.
            unsafe { *word = WaitSlot::ended_word(tid) };
            end_short(kind, start_ns, elapsed_ns, span_sample);
            Ok(None)
        }
        WordVerdict::NoWait => Ok(None),
        WordVerdict::Long { kind, start_ns, elapsed_ns } => {
            Ok(Some((Some(kind), start_ns, elapsed_ns)))
        }
        WordVerdict::AskTaskStorage => Ok(Some((None, 0, 0))),
    }
}

/// The current task and its thread id when it is a thread of the target other than
/// `wakee_tid`: only then is a long wait's end its doing.
#[inline(always)]
fn waker_of(wakee_tid: u32) -> Option<(*mut task_struct, u32)> {
    // SAFETY: the helper returns the current task as a BTF pointer, whose ids are then
    // plain loads, as in `task_field`.
    let waker = unsafe { bpf_get_current_task_btf() };
    if unsafe { task_field(waker, TASK_TGID_OFFSET.load()) } != TARGET_TGID.load() {
        return None;
    }
    // SAFETY: as above.
    let waker_tid = unsafe { task_field(waker, TASK_PID_OFFSET.load()) };
    (waker_tid != wakee_tid).then_some((waker, waker_tid))
}

/// Sends the waker of `wait` (the current task, `waker`) with its stack, when it is in a
/// futex wake: a wake from an interrupt (a timed wait's timer) that happened to land on a
/// target thread inside some other call is not its doing.
#[inline(always)]
fn send_waker(waker: *mut task_struct, waker_tid: u32, wait: &InFlightWait) {
    // SAFETY: the current task's saved user registers (a BTF pointer, as in `syscall_arg`).
    let regs = unsafe { bpf_task_pt_regs(waker) } as *const pt_regs;
    let (nr, op) = unsafe { ((*regs).orig_rax as i64, (*regs).rsi) };
    if wait.kind != WaitKind::Futex as u32
        || !(nr == syscall_nr::FUTEX_WAKE || nr == syscall_nr::FUTEX && is_futex_wake(op))
    {
        return;
    }
    // SAFETY: as above.
    let (ip, sp, bp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
    let Some(mut entry) = WAKES.reserve::<WakeRecord>(0) else {
        count(Counter::WakeRingBufferFull);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: a reserved slot of WakeRecord size; every field is written before submit.
    unsafe {
        (*record).waker_tid = waker_tid;
        (*record).wakee_tid = wait.tid;
        (*record).wait_start_ns = wait.start_ns;
        (*record).ip = ip;
        (*record).sp = sp;
        (*record).bp = bp;
        (*record)._pad = 0;
        (*record).stack_len = copy_user_stack(&mut (*record).stack, sp);
    }
    count(Counter::WakesSent);
    entry.submit(wake_flags(&WAKES, WAKES_WAKE_AT_BYTES.load()));
}

/// A task iterator (`iter/task`): writes a [`TaskLook`] of each task it walks (one
/// process's threads, or every task) to the iterator's seq file. A sampled recording reads
/// its target's threads this way, one pass per read; `tracer snapshot` needs rbp, which
/// /proc does not show, to unwind through frames whose CFI is rbp-based. The context is
/// `struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; }`,
/// and `bpf_iter_meta` starts with `struct seq_file *seq` (include/linux/bpf.h).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn tracer_task_looks(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the verifier types these loads from the iterator context; `task` is
    // NULL once, at the end of the iteration, and is checked. `task` is then a BTF task
    // pointer and `regs` a BTF pt_regs pointer, so the field loads are fault-checked.
    unsafe {
        let meta = *(ctx as *const *const *mut seq_file);
        let task = *(ctx as *const *mut task_struct).add(1);
        if task.is_null() {
            return 0;
        }
        let seq = *meta;
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        // The passes in the kernel start from each watched process's leader, and find
        // each thread's registers where this helper does.
        let tgid = task_field(task, TASK_TGID_OFFSET.load());
        if let Some(leader) = PASS_LEADERS.get_ptr_mut(tgid) {
            *leader = task_field_u64(task, TASK_GROUP_LEADER_OFFSET.load());
            let regs_from_stack =
                (regs as u64).wrapping_sub(task_field_u64(task, TASK_STACK_OFFSET.load()));
            if let Some(slot) = PASS_STATE.get_ptr_mut(PassState::RegsFromStack as u32) {
                *slot = regs_from_stack;
            }
        }
        let look = TaskLook {
            tid: task_field(task, TASK_PID_OFFSET.load()),
            tgid: task_field(task, TASK_TGID_OFFSET.load()),
            state: task_field(task, TASK_STATE_OFFSET.load()),
            on_cpu: task_field(task, TASK_ON_CPU_OFFSET.load()),
            switches: task_field_u64(task, TASK_NVCSW_OFFSET.load())
                .wrapping_add(task_field_u64(task, TASK_NIVCSW_OFFSET.load())),
            arrivals: match TASK_ARRIVALS_OFFSET.load() {
                TaskLook::ARRIVALS_UNKNOWN => TaskLook::ARRIVALS_UNKNOWN,
                offset => task_field_u64(task, offset),
            },
            syscall_nr: (*regs).orig_rax as i64,
            args: [
                syscall_arg(regs, 0),
                syscall_arg(regs, 1),
                syscall_arg(regs, 2),
                syscall_arg(regs, 3),
                syscall_arg(regs, 4),
                syscall_arg(regs, 5),
            ],
            ip: (*regs).rip,
            sp: (*regs).rsp,
            bp: (*regs).rbp,
            comm: bpf_probe_read_kernel(
                task.cast::<u8>().add(TASK_COMM_OFFSET.load() as usize).cast::<[u8; 16]>(),
            )
            .unwrap_or([0; 16]),
        };
        bpf_seq_write(
            seq,
            (&look as *const TaskLook).cast(),
            core::mem::size_of::<TaskLook>() as u32,
        );
    }
    0
}

/// Offsets for walking a process's threads (`task_struct.signal`, `.thread_node`,
/// `.group_leader`; `signal_struct.thread_head`); set by the loader.
#[unsafe(no_mangle)]
static TASK_SIGNAL_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_THREAD_NODE_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_GROUP_LEADER_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static SIGNAL_THREAD_HEAD_OFFSET: Global<u64> = Global::new(0);
/// `signal_struct.nr_threads`: whether a process's threads fit in what a pass has left.
#[unsafe(no_mangle)]
static SIGNAL_NR_THREADS_OFFSET: Global<u64> = Global::new(0);

/// What the passes share, by `PassState` index.
#[map]
static PASS_STATE: Array<u64> = Array::with_max_entries(PASS_STATE_ENTRIES, 0);

/// `PASS_STATE` indices.
#[repr(u32)]
enum PassState {
    /// When the last pass was made (`pass_claim`).
    LastPassNs = PASS_STATE_LAST_PASS_NS,
    /// How many of PASS_PROCESSES' slots a pass looks at (one past the last used).
    ProcessSlots = PASS_STATE_PROCESS_SLOTS,
    /// Where the user registers lie above a task's kernel stack base (`task_pt_regs(t) -
    /// t->stack`), as the task iterator found it; 0 until it ran.
    RegsFromStack = 2,
    /// The period in nanoseconds; set by userspace once the ticks are attached.
    PeriodNs = PASS_STATE_PERIOD_NS,
    /// The slot the next pass starts at: the first process the last one had no room for.
    NextSlot = 4,
    /// Passes made, each numbered by its own.
    Passes = PASS_STATE_PASSES,
    /// Laps over every process, and the number of the pass that ended the last.
    LastLap = PASS_STATE_LAST_LAP,
}

/// The processes the passes walk, by slot (0: an empty slot), set by userspace. A process
/// is in one slot from when it joins until it leaves, and a slot is emptied before it is
/// used again, so a pass that runs while they change walks a process once or not at all.
#[map]
static PASS_PROCESSES: Array<u32> = Array::with_max_entries(PASS_MAX_PROCESSES, 0);

/// Each watched process's group leader (a task pointer; 0 until known), by tgid: userspace
/// adds the tgid, the task iterator's first pass over the process finds its leader, and a
/// pass that ticks in the process keeps it. A leader's task stays while any thread of its
/// group lives.
#[map]
static PASS_LEADERS: HashMap<u32, u64> = HashMap::with_max_entries(PASS_MAX_PROCESSES, 0);

/// The passes' looks and stacks, drained by userspace a few times a second: no record
/// wakes it.
#[map]
static PASSES: RingBuf = RingBuf::with_byte_size(PASSES_RING_BYTES, 0);

/// The switch count of the wait whose stack each thread's last pass copy was of: a wait
/// is copied once, however many passes see it.
#[map]
static PASS_COPIED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// A pass of a sampled recording, made by the kernel's timer: attached to a cpu-clock
/// event of every CPU at the sampling rate, the first tick of each period walks the
/// target's threads (the group's list, from its leader) and writes a look at each to
/// `PASSES`, as the task iterator would; the others return at once. A thread newly
/// blocked in a watched call has its stack copied too when the tick interrupted a thread
/// of the same process, whose memory it then reads; otherwise userspace copies it at the
/// drain if the wait is still on. So the tracer wakes only to drain, not at the rate:
/// on this VM a process woken 49 times a second on the other CPU costs a futex ping-pong
/// 2–3% and a timer interrupt that returns to idle nothing measurable
/// (docs/overhead-log.md, session 34).
#[aya_ebpf::macros::perf_event]
pub fn tracer_sample_pass(_ctx: aya_ebpf::programs::PerfEventContext) -> u32 {
    let _ = try_sample_pass();
    0
}

#[inline(always)]
fn kernel_u64(at: u64) -> Result<u64, i32> {
    // SAFETY: the helper faults safely.
    unsafe { bpf_probe_read_kernel(at as *const u64) }
}

#[inline(always)]
fn kernel_u32(at: u64) -> Result<u32, i32> {
    // SAFETY: the helper faults safely.
    unsafe { bpf_probe_read_kernel(at as *const u32) }
}

fn try_sample_pass() -> Result<(), i32> {
    let state = |index: PassState| PASS_STATE.get_ptr_mut(index as u32).ok_or(0);
    let now = now_ns();
    // SAFETY (here and below): aligned array values, read and written whole.
    let period = unsafe { *state(PassState::PeriodNs)? };
    let last_pass_ns = state(PassState::LastPassNs)?;
    let seen = unsafe { *last_pass_ns };
    if !pass_claim(now, period, seen) || !swap_word(last_pass_ns, seen, now) {
        return Ok(());
    }
    // SAFETY: as above.
    let slots = unsafe { *state(PassState::ProcessSlots)? }.min(u64::from(PASS_MAX_PROCESSES));
    // No process to walk (the last one left): no pass, nor a lap.
    if slots == 0 {
        return Ok(());
    }
    let passes = state(PassState::Passes)?;
    // SAFETY: as above; only the pass that claimed the period writes it.
    let number = unsafe { *passes } + 1;
    unsafe { *passes = number };
    // The process the tick interrupted: its leader is kept, and its threads' stacks can
    // be copied (the pass runs in their memory).
    // SAFETY: the helper returns the current task as a BTF pointer.
    let current = unsafe { bpf_get_current_task_btf() };
    let current_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(leader) = PASS_LEADERS.get_ptr_mut(current_tgid) {
        // SAFETY: as above; a map value, written whole.
        unsafe { *leader = task_field_u64(current, TASK_GROUP_LEADER_OFFSET.load()) };
    }
    // The walk lives in a map, not on the BPF stack: the verifier follows values on the
    // stack (a slot counted there, a key of an array it knows; each field's constant first
    // state) step by step, and took half a second to seconds on the loop, or gave up; a
    // map value it takes as any value, and checks a step once for all (39 ms here).
    let walk = PASS_WALK.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: this CPU's value, which only a pass on this CPU uses (passes do not nest).
    let walk = unsafe { &mut *walk };
    let next_slot = state(PassState::NextSlot)?;
    // The processes are walked in turns from where the last pass left off.
    let first_slot = unsafe { *next_slot };
    *walk = PassWalk {
        head: 0,
        node: 0,
        now,
        regs_from_stack: unsafe { *state(PassState::RegsFromStack)? },
        pass: pass_id(now),
        number,
        current_tgid,
        slot: if first_slot < slots { first_slot as u32 } else { 0 },
        slots: slots as u32,
        slots_visited: 0,
        threads_left: PASS_MAX_THREADS,
        tgid: 0,
        ended: 0,
        looks: 0,
        missed: 0,
    };
    // bpf_loop: the verifier checks one step, not every step. A step looks at one thread,
    // or starts or ends a process's walk: `PASS_MAX_THREADS` steps for threads, two for
    // each slot, one to see the walk ended. Each step finds the walk in its map (bpf_loop
    // hands a callback only a pointer to the stack).
    // SAFETY: `pass_step` takes no context.
    unsafe {
        generated::bpf_loop(
            PASS_MAX_THREADS + 2 * slots as u32 + 1,
            pass_step as *const () as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // Stopped short (a process's threads grew past what its walk had room for): it is
    // missed from there, and its end says so; unless the steps ran out right after its
    // last thread, with only its end left to write.
    if walk.ended == 0 && walk.node != 0 {
        if walk.node != walk.head {
            walk.missed += 1;
        }
        end_process_walk(walk);
    }
    // SAFETY: as above.
    unsafe { *next_slot = u64::from(walk.slot) };
    // What the pass cost this CPU: userspace spaces the passes out by it (`--cpu-budget`).
    add(Counter::PassNs, now_ns().saturating_sub(now));
    Ok(())
}

/// Each CPU's pass's walk (see `try_sample_pass`).
#[map]
static PASS_WALK: PerCpuArray<PassWalk> = PerCpuArray::with_max_entries(1, 0);

/// Where a pass's walk stands, from one `pass_step` to the next: at which process, and
/// where along its thread list.
#[repr(C)]
struct PassWalk {
    /// The thread list's head, in the process's `signal_struct`: its walk ends back at it.
    head: u64,
    /// The next thread's `thread_node`; 0 between two processes.
    node: u64,
    now: u64,
    regs_from_stack: u64,
    /// The pass's number (`PassState::Passes`).
    number: u64,
    pass: u32,
    /// The process the tick interrupted.
    current_tgid: u32,
    /// The next PASS_PROCESSES slot, the slots the pass looks at (it wraps round to slot
    /// 0 after the last), and how many it visited.
    slot: u32,
    slots: u32,
    slots_visited: u32,
    /// Threads the pass may still walk (of `PASS_MAX_THREADS`).
    threads_left: u32,
    /// The process being walked.
    tgid: u32,
    /// Set once every slot was walked.
    ended: u32,
    /// The process's looks written, and its threads missed (`PassEnd`): those the ring had
    /// no room for, and 1 for those after its walk stopped short.
    looks: u32,
    missed: u32,
}

/// One step of a pass (a `bpf_loop` callback): a look at the next thread of the process
/// being walked, or its end, or the start of the next process's walk. 0 to go on, 1 to
/// stop.
#[inline(never)]
extern "C" fn pass_step(_index: u64, _context: *mut core::ffi::c_void) -> i64 {
    let Some(walk) = PASS_WALK.get_ptr_mut(0) else { return 1 };
    // SAFETY: this CPU's walk, which only this pass uses.
    let walk = unsafe { &mut *walk };
    if walk.node == 0 {
        if walk.slots_visited >= walk.slots {
            walk.ended = 1;
            return 1;
        }
        let slot = walk.slot;
        if start_process_walk(walk, slot) == WalkStart::NoRoom {
            // This process is the next pass's first.
            count(Counter::PassesCut);
            walk.ended = 1;
            return 1;
        }
        walk.slots_visited += 1;
        walk.slot = if slot + 1 >= walk.slots {
            end_lap(walk.number);
            0
        } else {
            slot + 1
        };
        return 0;
    }
    if walk.node == walk.head {
        end_process_walk(walk);
        return 0;
    }
    let task = walk.node.wrapping_sub(TASK_THREAD_NODE_OFFSET.load());
    let in_process = walk.tgid == walk.current_tgid;
    if look_in_pass(task, walk.now, walk.pass, walk.regs_from_stack, in_process) {
        walk.looks += 1;
    } else {
        walk.missed += 1;
    }
    match kernel_u64(walk.node) {
        Ok(next) => walk.node = next,
        // A list that cannot be read on: the threads after went unseen.
        Err(_) => {
            walk.missed += 1;
            end_process_walk(walk);
        }
    }
    0
}

/// A lap over every slot ended with pass `number`: counted, with its number, in the one
/// word userspace reads (`PASS_STATE_LAST_LAP`).
#[inline(always)]
fn end_lap(number: u64) {
    if let Some(last) = PASS_STATE.get_ptr_mut(PassState::LastLap as u32) {
        // SAFETY: an aligned array value, read and written whole; only the pass that
        // claimed the period writes it.
        unsafe {
            let laps = (*last >> 32) + 1;
            *last = (laps << 32) | (number & u64::from(u32::MAX));
        }
    }
}

/// What `start_process_walk` did with a slot.
#[derive(PartialEq, Eq)]
#[repr(u32)]
enum WalkStart {
    /// Started its process's walk, or passed over the slot (empty, a process gone or not
    /// known yet, more threads than any pass walks).
    Done,
    /// Left the process to the next pass: its threads do not fit in what this one has left.
    NoRoom,
}

/// Starts the walk of the process in PASS_PROCESSES' `slot`, if it holds one whose leader
/// is known and alive, whose thread list can be read and whose threads fit in what the
/// pass has left; a process of more threads than any pass walks gets an end that says so.
#[inline(never)]
fn start_process_walk(walk: &mut PassWalk, slot: u32) -> WalkStart {
    // SAFETY: a map value, read whole.
    let Some(tgid) = PASS_PROCESSES.get(slot).copied().filter(|&tgid| tgid != 0) else {
        return WalkStart::Done;
    };
    // SAFETY: as above.
    let leader = PASS_LEADERS.get_ptr(tgid).map_or(0, |leader| unsafe { *leader });
    // A leader that no longer names the process was freed (the process is gone).
    if leader == 0
        || walk.regs_from_stack == 0
        || kernel_u32(leader.wrapping_add(TASK_TGID_OFFSET.load())) != Ok(tgid)
    {
        count(Counter::PassesWithoutProcess);
        return WalkStart::Done;
    }
    // The thread list is RCU-protected; a timer's interrupt is a read-side section.
    let signal = kernel_u64(leader.wrapping_add(TASK_SIGNAL_OFFSET.load()));
    let threads =
        signal.and_then(|signal| kernel_u32(signal.wrapping_add(SIGNAL_NR_THREADS_OFFSET.load())));
    let head = signal.map(|signal| signal.wrapping_add(SIGNAL_THREAD_HEAD_OFFSET.load()));
    let (Ok(threads), Ok(head), Ok(node)) = (threads, head, head.and_then(kernel_u64)) else {
        count(Counter::PassesIncomplete);
        return WalkStart::Done;
    };
    if threads > PASS_MAX_THREADS {
        write_unwalkable_end(walk.pass, tgid, threads);
        return WalkStart::Done;
    }
    if threads > walk.threads_left {
        return WalkStart::NoRoom;
    }
    walk.threads_left -= threads;
    // A list never read (0) ends at once, as an empty one.
    walk.head = head;
    walk.node = if node == 0 { head } else { node };
    walk.tgid = tgid;
    walk.looks = 0;
    walk.missed = 0;
    WalkStart::Done
}

/// The end of a pass over a process of more threads than any pass walks, without looks:
/// userspace reads it itself from then on.
#[inline(never)]
fn write_unwalkable_end(pass: u32, tgid: u32, threads: u32) {
    submit_pass_end(PassEnd {
        tag: PASS_END,
        pass,
        tgid,
        looks: 0,
        missed: 0,
        unwalkable_threads: threads,
    });
}

/// Writes a pass's end to `PASSES`; false (counted) if the ring had no room.
#[inline(always)]
fn submit_pass_end(end: PassEnd) -> bool {
    let Some(mut entry) = PASSES.reserve::<PassEnd>(0) else {
        count(Counter::PassRingFull);
        return false;
    };
    entry.write(end);
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    true
}

/// Ends the walk of the process being walked: its `PassEnd`, counted incomplete if it
/// missed a thread or the ring lost it (userspace gives such a pass up, or never sees it).
#[inline(never)]
fn end_process_walk(walk: &mut PassWalk) {
    let end_written = submit_pass_end(PassEnd {
        tag: PASS_END,
        pass: walk.pass,
        tgid: walk.tgid,
        looks: walk.looks,
        missed: walk.missed,
        unwalkable_threads: 0,
    });
    // Without a branch on `missed`, which the verifier would follow into every count the
    // walk's steps could reach.
    let missed_any = (u64::from(walk.missed) + u64::from(u32::MAX)) >> 32;
    add(Counter::PassesIncomplete, missed_any | u64::from(!end_written));
    walk.node = 0;
}

/// Writes a pass's look at `task`, and a copy of its stack when it is newly blocked in a
/// watched call and the pass runs in its process; false if the ring had no room for the
/// look.
#[inline(never)]
fn look_in_pass(task: u64, now: u64, pass: u32, regs_from_stack: u64, in_process: bool) -> bool {
    let Some(mut entry) = PASSES.reserve::<PassLook>(0) else {
        count(Counter::PassRingFull);
        return false;
    };
    let field32 = |offset: u64| kernel_u32(task.wrapping_add(offset)).unwrap_or(0);
    let field64 = |offset: u64| kernel_u64(task.wrapping_add(offset)).unwrap_or(0);
    let arrivals_of = || match TASK_ARRIVALS_OFFSET.load() {
        TaskLook::ARRIVALS_UNKNOWN => TaskLook::ARRIVALS_UNKNOWN,
        offset => field64(offset),
    };
    let regs_at = field64(TASK_STACK_OFFSET.load()).wrapping_add(regs_from_stack);
    // SAFETY: the helper faults safely; pt_regs is plain integers.
    let regs: pt_regs =
        unsafe { bpf_probe_read_kernel(regs_at as *const pt_regs).unwrap_or(core::mem::zeroed()) };
    let switches =
        field64(TASK_NVCSW_OFFSET.load()).wrapping_add(field64(TASK_NIVCSW_OFFSET.load()));
    let record = entry.as_mut_ptr();
    // SAFETY: the reserved record, PassLook-sized, filled field by field (a whole look
    // built on the BPF stack beside the registers would crowd it).
    let look = unsafe {
        (*record).tag = PASS_LOOK;
        (*record).pass = pass;
        (*record).time_ns = now;
        let look = &mut (*record).look;
        look.tid = field32(TASK_PID_OFFSET.load());
        look.tgid = field32(TASK_TGID_OFFSET.load());
        look.state = field32(TASK_STATE_OFFSET.load());
        look.on_cpu = field32(TASK_ON_CPU_OFFSET.load());
        look.switches = switches;
        look.arrivals = arrivals_of();
        look.syscall_nr = regs.orig_rax as i64;
        look.args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9];
        look.ip = regs.rip;
        look.sp = regs.rsp;
        look.bp = regs.rbp;
        look.comm =
            bpf_probe_read_kernel(task.wrapping_add(TASK_COMM_OFFSET.load()) as *const [u8; 16])
                .unwrap_or([0; 16]);
        &*look
    };
    let (tid, tgid, sp, arrivals) = (look.tid, look.tgid, look.sp, look.arrivals);
    let watched = look.state != 0
        && look.on_cpu == 0
        && matches!(
            classify_syscall(look.syscall_nr, |n| Ok::<_, ()>(look_arg(look, n))),
            Ok(Some(_))
        );
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    // SAFETY: a map value, read whole.
    if !watched || PASS_COPIED.get_ptr(tid).is_some_and(|copied| unsafe { *copied } == switches) {
        return true;
    }
    if !in_process {
        count(Counter::PassCopiesLeft);
        return true;
    }
    let Some(mut entry) = PASSES.reserve::<PassStack>(0) else {
        count(Counter::PassRingFull);
        return true;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: the reserved record, PassStack-sized. The thread is asleep and shares the
    // interrupted thread's memory, where `sp` is its stack.
    unsafe {
        (*record).tag = PASS_STACK;
        (*record).tid = tid;
        (*record).pass = pass;
        (*record).tgid = tgid;
        (*record)._pad = 0;
        (*record).switches = switches;
        (*record).sp = sp;
        (*record).len = copy_user_stack(&mut (*record).stack, sp);
    }
    // Nothing readable (the interrupted thread is exiting, its memory let go): userspace
    // copies it at the drain.
    // SAFETY: as above.
    if unsafe { (*record).len } == 0 {
        count(Counter::PassCopiesLeft);
        entry.discard(BPF_RB_NO_WAKEUP as u64);
        return true;
    }
    // A thread that arrived on a CPU meanwhile (woken, running, not yet switched out
    // again) may have torn the copy.
    if arrivals_of() != arrivals {
        count(Counter::PassCopiesTorn);
        entry.discard(BPF_RB_NO_WAKEUP as u64);
        return true;
    }
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    let _ = PASS_COPIED.insert(tid, switches, 0);
    count(Counter::PassCopies);
    true
}

/// The n-th syscall argument of a look (a match, not an index: an index's bounds check
/// would leave a panic path the verifier refuses).
#[inline(always)]
fn look_arg(look: &TaskLook, n: usize) -> u64 {
    match n {
        0 => look.args[0],
        1 => look.args[1],
        2 => look.args[2],
        3 => look.args[3],
        4 => look.args[4],
        _ => look.args[5],
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// Goroutine waits of a Go program (`tracer record` on Go). A goroutine parks in the Go
// scheduler, not in the kernel: a uprobe at `runtime.gopark` notes the goroutine, its wait
// reason and its stack; a uprobe at `runtime.execute`, which every goroutine passes through
// to run again (whoever readied it: a channel, a timer, the netpoller), ends the wait and adds
// it to per-(stack, reason) totals in the kernel. Never uretprobes: Go moves goroutine stacks,
// and a uretprobe's rewritten return address breaks that.

/// Offset of `runtime.g.goid` in the target's runtime (from its DWARF); set by the loader.
#[unsafe(no_mangle)]
static GO_GOID_OFFSET: Global<u64> = Global::new(152);

/// Parked goroutines; 256k entries hold more waiting goroutines than most services have.
#[map]
static GO_PARKED: aya_ebpf::maps::HashMap<u64, GoPark> =
    aya_ebpf::maps::HashMap::with_max_entries(1 << 18, 0);

/// Goroutine stacks at park (user stacks, frame-pointer walk).
#[map]
static GO_STACKS: aya_ebpf::maps::StackTrace =
    aya_ebpf::maps::StackTrace::with_max_entries(16384, 0);

/// Count and total time of the ended waits, per (stack, caller, reason).
#[map]
static GO_WAITS: aya_ebpf::maps::PerCpuHashMap<GoWaitKey, GoWaitTotals> =
    aya_ebpf::maps::PerCpuHashMap::with_max_entries(16384, 0);

/// Go probe counters, indexed by `GoCounter`.
#[map]
static GO_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GO_COUNTER_COUNT as u32, 0);

#[inline(always)]
fn go_count(counter: GoCounter) {
    if let Some(value) = GO_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; no other program touches it on this CPU meanwhile.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn goid_of(g: u64) -> Result<u64, i32> {
    // SAFETY: reads the target's memory; a bad pointer only makes the helper fail.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user((g + GO_GOID_OFFSET.load()) as *const u64) }
}

/// `runtime.gopark(unlockf, lock, reason waitReason, traceEv, traceskip)`, at entry. With
/// Go's register ABI (1.17+, amd64) the arguments are in RAX, RBX, RCX, RDI, RSI and R14
/// holds the current g.
#[aya_ebpf::macros::uprobe]
pub fn tracer_go_park(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
    let _ = try_go_park(&ctx);
    0
}

fn try_go_park(ctx: &aya_ebpf::programs::ProbeContext) -> Result<(), i32> {
    use aya_ebpf::programs::tracing::StackIdContext as _;
    if target_thread().is_none() {
        return Ok(());
    }
    let regs = ctx.regs;
    // SAFETY: the probe's saved user registers.
    let (g, reason, sp) = unsafe { ((*regs).r14, (*regs).rcx, (*regs).rsp) };
    let goid = goid_of(g)?;
    // SAFETY: reads the goroutine's stack; failure gives 0.
    let caller: u64 =
        unsafe { aya_ebpf::helpers::bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
    let stack_id = match ctx.get_stackid(&GO_STACKS, aya_ebpf::bindings::BPF_F_USER_STACK as u64) {
        Ok(id) => id as u32,
        Err(_) => {
            go_count(GoCounter::StacksLost);
            GoPark::NO_STACK
        }
    };
    let park = GoPark { start_ns: now_ns(), caller, stack_id, reason: reason as u8 as u32 };
    go_count(GoCounter::Parks);
    if GO_PARKED.insert(goid, park, 0).is_err() {
        go_count(GoCounter::ParksLost);
    }
    Ok(())
}

/// `runtime.execute(gp *g, inheritTime bool)`, at entry: gp (RAX) runs again.
#[aya_ebpf::macros::uprobe]
pub fn tracer_go_run(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
    let _ = try_go_run(&ctx);
    0
}

fn try_go_run(ctx: &aya_ebpf::programs::ProbeContext) -> Result<(), i32> {
    if target_thread().is_none() {
        return Ok(());
    }
    // SAFETY: the probe's saved user registers.
    let gp = unsafe { (*ctx.regs).rax };
    let goid = goid_of(gp)?;
    let Some(park) = GO_PARKED.get_ptr(goid) else {
        // Preempted or new, not parked (or parked before the probes were attached).
        return Ok(());
    };
    // SAFETY: a value of the map; copied before the entry is deleted.
    let park = unsafe { *park };
    let _ = GO_PARKED.remove(goid);
    let duration_ns = now_ns().saturating_sub(park.start_ns);
    let key = GoWaitKey { caller: park.caller, stack_id: park.stack_id, reason: park.reason };
    go_count(GoCounter::WaitsEnded);
    match GO_WAITS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a per-CPU value.
        Some(totals) => unsafe {
            (*totals).count += 1;
            (*totals).total_ns += duration_ns;
        },
        None => {
            let totals = GoWaitTotals { count: 1, total_ns: duration_ns };
            if GO_WAITS.insert(key, totals, 0).is_err() {
                go_count(GoCounter::WaitsLost);
            }
        }
    }
    Ok(())
}
