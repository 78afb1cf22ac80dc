//! tracer's kernel-side probes: which threads of one process block, in which call,
//! for how long, and (for waits over the threshold) where in the program.
//!
//! Three programs share each thread's wait in progress (task storage):
//! - `sched_switch` notes a wait when a thread of the target goes to sleep inside a
//!   watched call (the call and its arguments read from the registers saved at syscall
//!   entry). Other processes cost one comparison, and calls that return without sleeping
//!   cost nothing: there is no syscall-entry probe.
//! - `sched_waking` sends the waker's stack when a thread of the target wakes another out
//!   of a long futex wait;
//! - `raw_syscalls:sys_exit` ends the wait: under the threshold it only adds to per-kind
//!   totals; over it, it sends the registers and a copy of the user stack to userspace.
//!
//! All three are attached raw (`tp_btf`): sys_exit fires on every syscall of the machine,
//! and a classic tracepoint program would first have the kernel fill a perf record for
//! each one.
//!
//! Besides: a task iterator (`iter/task`) that reads every task's saved registers for
//! `snapshot`, and for Go programs two uprobes (`runtime.gopark`, `runtime.execute`) that
//! time goroutine waits in the Go scheduler.
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs, seq_file, task_struct,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task_btf, bpf_probe_read_user, bpf_seq_write, bpf_task_pt_regs,
        },
    },
    macros::{btf_map, btf_tracepoint, map},
    maps::{PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use tracer_common::{
    COUNTER_COUNT, Counter, GO_COUNTER_COUNT, GoCounter, GoPark, GoWaitKey, GoWaitTotals,
    InFlightWait, STACK_COPY_BYTES, ShortWaitTotals, TaskRegs, WAIT_KIND_COUNT, WAITS_RING_BYTES,
    WAKES_RING_BYTES, WaitKind, WaitRecord, WakeRecord, classify_syscall, is_futex_wake,
    syscall_nr,
};

/// The process (tgid) to trace; set by the loader.
#[unsafe(no_mangle)]
static TARGET_TGID: Global<u32> = Global::new(0);

/// Waits at least this long are sent with a stack; shorter ones are only counted.
#[unsafe(no_mangle)]
static MIN_WAIT_NS: Global<u64> = Global::new(1_000_000);

mod task_storage;

use task_storage::TaskStorage;

/// Each thread's wait in progress, stored on its task (not per CPU: a thread may
/// wake on another CPU; not by tid in a hash: the task pointer finds it without hashing).
#[btf_map]
static IN_FLIGHT: TaskStorage<InFlightWait> = TaskStorage::new();

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
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; no other program touches it on this CPU meanwhile.
        unsafe { *value += 1 };
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

/// Notes a wait when a thread of the target goes to sleep inside a watched call.
/// Arguments: (bool preempt, task_struct *prev, task_struct *next, unsigned int prev_state),
/// see include/trace/events/sched.h; the program runs in the context of `prev`.
#[btf_tracepoint(function = "sched_switch")]
pub fn tracer_sched_switch(ctx: BtfTracePointContext) -> u32 {
    let _ = try_sched_switch(&ctx);
    0
}

fn try_sched_switch(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let Some(tid) = target_thread() else {
        return Ok(());
    };
    // Sleeping states (include/linux/sched.h); a stopped or traced thread has neither
    // bit: it waits for a signal or a debugger, not for what its call waits on.
    const TASK_INTERRUPTIBLE: u32 = 0x1;
    const TASK_UNINTERRUPTIBLE: u32 = 0x2;
    let preempted: u64 = ctx.arg(0);
    let prev_state: u32 = ctx.arg(3);
    // Preempted (even between set_current_state() and schedule()), the thread stays
    // runnable: it waits for a CPU, not for an event.
    if preempted != 0 || prev_state & (TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE) == 0 {
        return Ok(());
    }
    // SAFETY: the current task (prev) as a BTF pointer.
    let task = unsafe { bpf_get_current_task_btf() };
    // SAFETY: the current task's user registers, saved at syscall entry.
    let regs = unsafe { bpf_task_pt_regs(task) } as *const pt_regs;
    // A sleep outside any syscall (a page fault) has orig_rax -1, which no kind matches.
    // The entry code sets rax to -ENOSYS and the call's return value replaces it: a sleep
    // on the way out of a call that has returned (memory.high throttling, task work) has
    // the call's number still in orig_rax but is not inside it.
    // SAFETY: a BTF pointer, as in `syscall_arg`.
    let (nr, rax) = unsafe { ((*regs).orig_rax as i64, (*regs).rax as i64) };
    const ENOSYS: i64 = 38;
    if rax != -ENOSYS {
        return Ok(());
    }
    let Ok(Some((kind, object))) = classify_syscall(nr, |n| Ok::<_, ()>(syscall_arg(regs, n)))
    else {
        return Ok(());
    };
    // SAFETY: the entry is this thread's own, and only its own sleeps and exits write it.
    let Some(entry) = (unsafe { IN_FLIGHT.get_or_create(task) }) else {
        count(Counter::InFlightMapFull);
        return Ok(());
    };
    // SAFETY: as above.
    let noted = unsafe { *entry };
    if noted.start_ns != 0 {
        if noted.syscall == nr as u32 && noted.object == object {
            // Asleep again in the same call: the wait began at its first sleep.
            return Ok(());
        }
        // A wait no exit of its call ended (an exit missed: none is known to be).
        count(Counter::WaitsDiscarded);
    }
    count(Counter::WaitsStarted);
    // SAFETY: as above.
    unsafe {
        *entry = InFlightWait {
            start_ns: now_ns(),
            object,
            kind: kind as u32,
            syscall: nr as u32,
            tid,
            _pad: 0,
        }
    };
    Ok(())
}

/// Arguments: (struct pt_regs *regs, long ret), see include/trace/events/syscalls.h.
#[btf_tracepoint(function = "sys_exit")]
pub fn tracer_sys_exit(ctx: BtfTracePointContext) -> u32 {
    let _ = try_sys_exit(&ctx);
    0
}

fn try_sys_exit(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let Some(tid) = target_thread() else {
        return Ok(());
    };
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: the tracepoint's (BTF) pointer to the exiting call's saved registers, as in
    // `syscall_arg`.
    let nr = unsafe { (*regs).orig_rax } as i64;
    // Only a watched call can end a wait: the others (futex wakes among them, as many as
    // the waits in a handoff) return before the task-storage lookup.
    let Ok(Some((_, object))) = classify_syscall(nr, |n| Ok::<_, ()>(syscall_arg(regs, n))) else {
        return Ok(());
    };
    // SAFETY: the current task as a BTF pointer.
    let Some(entry) = (unsafe { IN_FLIGHT.get(bpf_get_current_task_btf()) }) else {
        return Ok(());
    };
    // SAFETY: only this thread writes its entry, and it is here, not in sched_switch.
    let wait = unsafe { *entry };
    if wait.start_ns == 0 {
        // Not in a wait: the call returned without sleeping.
        return Ok(());
    }
    // SAFETY: as above; the wait ends here, one way or the other.
    unsafe { (*entry).start_ns = 0 };
    if nr as u32 != wait.syscall || object != wait.object {
        count(Counter::WaitsDiscarded);
        return Ok(());
    }
    let duration_ns = now_ns().saturating_sub(wait.start_ns);
    if duration_ns < MIN_WAIT_NS.load() {
        count(Counter::ShortWaits);
        if let Some(totals) = SHORT_WAITS.get_ptr_mut(wait.kind) {
            // SAFETY: per-CPU slot, as in `count`.
            unsafe {
                (*totals).count += 1;
                (*totals).total_ns += duration_ns;
            }
        }
        return Ok(());
    }
    let ret: i64 = ctx.arg(1);
    send_long_wait(tid, &wait, duration_ns, ret, regs)
}

/// `regs`: the exiting call's saved user registers (a BTF pointer, as in `syscall_arg`).
fn send_long_wait(
    tid: u32,
    wait: &InFlightWait,
    duration_ns: u64,
    ret: i64,
    regs: *const pt_regs,
) -> Result<(), i32> {
    let Some(mut entry) = WAITS.reserve::<WaitRecord>(0) else {
        count(Counter::RingBufferFull);
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to a reserved ring-buffer slot of WaitRecord size; every
    // field is written before submit. `regs` as above.
    unsafe {
        let (ip, sp, bp) = ((*regs).rip, (*regs).rsp, (*regs).rbp);
        (*record).tid = tid;
        (*record).kind = wait.kind;
        (*record).start_ns = wait.start_ns;
        (*record).duration_ns = duration_ns;
        (*record).object = wait.object;
        (*record).ret = ret;
        (*record).ip = ip;
        (*record).sp = sp;
        (*record).bp = bp;
        (*record).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*record)._pad = 0;
        (*record).stack_len = copy_user_stack(&mut (*record).stack, sp);
    }
    count(Counter::LongWaits);
    entry.submit(wake_flags(&WAITS, WAITS_WAKE_AT_BYTES.load()));
    Ok(())
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
            count(Counter::StackShortened);
            return len as u32;
        }
    }
    count(Counter::StackUnreadable);
    0
}

#[inline(always)]
fn read_user(dst: *mut u8, len: usize, src: u64) -> bool {
    // SAFETY: `dst` has at least STACK_COPY_BYTES >= len bytes; the helper faults
    // safely on unmapped user memory and returns an error.
    unsafe { bpf_probe_read_user(dst.cast(), len as u32, src as *const _) == 0 }
}

/// Who wakes a long futex wait: when a thread of the target wakes another one whose
/// futex wait has already lasted the threshold, send the waker's stack. Runs in the
/// waker's context (sched_waking fires in the task that calls wake_up).
/// Arguments: (struct task_struct *p), the task being woken (include/trace/events/sched.h).
#[btf_tracepoint(function = "sched_waking")]
pub fn tracer_sched_waking(ctx: BtfTracePointContext) -> u32 {
    let _ = try_sched_waking(&ctx);
    0
}

fn try_sched_waking(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let Some(waker_tid) = target_thread() else {
        return Ok(());
    };
    // SAFETY: the current task's saved user registers (a BTF pointer, as in
    // `syscall_arg`). The waker must be in a futex wake: a wake from an interrupt (a
    // timed wait's timer) that happened to land on a target thread inside some other call
    // is not this thread's doing. Checked first: it is cheaper than the wakee's lookup.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    let (nr, op) = unsafe { ((*regs).orig_rax as i64, (*regs).rsi) };
    if !(nr == syscall_nr::FUTEX_WAKE || nr == syscall_nr::FUTEX && is_futex_wake(op)) {
        return Ok(());
    }
    let wakee: *mut task_struct = ctx.arg(0);
    // SAFETY: a BTF task pointer from the tracepoint; read-only copy of its entry (a
    // concurrent exit only makes it stale).
    let Some(wait) = (unsafe { IN_FLIGHT.get(wakee) }).map(|entry| unsafe { *entry }) else {
        return Ok(());
    };
    let wakee_tid = wait.tid;
    if wakee_tid == waker_tid
        || wait.start_ns == 0
        || wait.kind != WaitKind::Futex as u32
        || now_ns().saturating_sub(wait.start_ns) < MIN_WAIT_NS.load()
    {
        return Ok(());
    }
    // SAFETY: as above.
    let (ip, sp, bp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
    let Some(mut entry) = WAKES.reserve::<WakeRecord>(0) else {
        count(Counter::WakeRingBufferFull);
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    // SAFETY: a reserved slot of WakeRecord size; every field is written before submit.
    unsafe {
        (*record).waker_tid = waker_tid;
        (*record).wakee_tid = wakee_tid;
        (*record).wait_start_ns = wait.start_ns;
        (*record).ip = ip;
        (*record).sp = sp;
        (*record).bp = bp;
        (*record)._pad = 0;
        (*record).stack_len = copy_user_stack(&mut (*record).stack, sp);
    }
    count(Counter::WakesSent);
    entry.submit(wake_flags(&WAKES, WAKES_WAKE_AT_BYTES.load()));
    Ok(())
}

/// A task iterator (`iter/task`): writes the saved user registers of every task to the
/// iterator's seq file. `tracer snapshot` needs rbp, which /proc does not show, to
/// unwind through frames whose CFI is rbp-based. The context is
/// `struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; }`,
/// and `bpf_iter_meta` starts with `struct seq_file *seq` (include/linux/bpf.h).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn tracer_task_regs(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the verifier types these loads from the iterator context; `task` is
    // NULL once, at the end of the iteration, and is checked.
    unsafe {
        let meta = *(ctx as *const *const *mut seq_file);
        let task = *(ctx as *const *mut task_struct).add(1);
        if task.is_null() {
            return 0;
        }
        let seq = *meta;
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        let saved = TaskRegs {
            ip: bpf_probe_read_kernel(&(*regs).rip).unwrap_or(0),
            sp: bpf_probe_read_kernel(&(*regs).rsp).unwrap_or(0),
            bp: bpf_probe_read_kernel(&(*regs).rbp).unwrap_or(0),
        };
        bpf_seq_write(
            seq,
            (&saved as *const TaskRegs).cast(),
            core::mem::size_of::<TaskRegs>() as u32,
        );
    }
    0
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
