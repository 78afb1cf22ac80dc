//! What each goroutine in a system call is in: the call and what it is on (`write on
//! pipe:[4711]`, `fsync on /var/lib/app/journal`). The runtime does not say cheaply which
//! thread runs a goroutine, but the thread's user stack pointer at the call's entry
//! (/proc/PID/task/TID/syscall) lies in the goroutine's stack, and no two goroutines'
//! stacks overlap: that ties each blocked thread to its goroutine. A pipe's fill is kept as
//! its state, as a socket's buffers are (`pipe full (65536/65536 bytes)`).

use super::goroutines::{Goroutine, GoroutineCounts};
use crate::{
    objects::{WaitObjects, pipe_inode},
    report::escape_name,
    threads::{SyscallState, blocked_calls, known_syscall_name, syscall_descriptor},
};

/// Names the call of each goroutine of `goroutines` in a system call, and keeps each
/// pipe's state in `objects`; those whose thread is not found blocked (it returned, or is
/// on a CPU in the kernel) are counted.
pub fn name_syscall_waits(
    pid: u32,
    goroutines: &mut [Goroutine],
    counts: &mut GoroutineCounts,
    objects: &mut WaitObjects,
) {
    let mut in_syscall: Vec<&mut Goroutine> =
        goroutines.iter_mut().filter(|goroutine| goroutine.in_syscall()).collect();
    if in_syscall.is_empty() {
        return;
    }
    in_syscall.sort_by_key(|goroutine| goroutine.stack_lo);
    for (_, call) in blocked_calls(pid).unwrap_or_default() {
        if let Some(goroutine) = on_stack(&mut in_syscall, call.sp) {
            goroutine.object = Some(describe(pid, &call, objects));
        }
    }
    counts.objects_unnamed +=
        in_syscall.iter().filter(|goroutine| goroutine.object.is_none()).count() as u64;
}

/// The goroutine of `by_stack` (sorted by the bottom of their stacks) whose stack holds
/// `sp`.
fn on_stack<'g>(by_stack: &'g mut [&mut Goroutine], sp: u64) -> Option<&'g mut Goroutine> {
    let after = by_stack.partition_point(|goroutine| goroutine.stack_lo <= sp);
    let goroutine = by_stack.get_mut(after.checked_sub(1)?)?;
    (sp < goroutine.stack_hi).then_some(&mut **goroutine)
}

/// `write on pipe:[4711]`: the call's name (its number for a call not known by name:
/// the goroutine's object reads `syscall 999`), and what its descriptor is open on (a
/// path, `pipe:[…]`, `socket:[…]`) where it has one.
fn describe(pid: u32, call: &SyscallState, objects: &mut WaitObjects) -> String {
    let name = known_syscall_name(call.nr).map_or_else(|| call.nr.to_string(), str::to_owned);
    let Some(fd) = syscall_descriptor(call) else { return name };
    let Ok(target) = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) else {
        return format!("{name} on fd {fd}");
    };
    let target = escape_name(&target.to_string_lossy()).into_owned();
    if let Some(inode) = pipe_inode(&target) {
        objects.note_pipe(inode, fd as u64);
    }
    format!("{name} on {target}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn in_syscall(goid: u64, stack_lo: u64, stack_hi: u64) -> Goroutine {
        Goroutine {
            goid,
            address: 0,
            sp: stack_hi - 256,
            tracking_seq: None,
            bp: 0,
            frameless: 0,
            stack_lo,
            stack_hi,
            wait_reason: super::super::goroutines::IN_SYSCALL,
            wait_since: 0,
            pcs: Arc::from(vec![0x1000]),
            truncated: false,
            waiting: 0,
            gopc: 0,
            parent_goid: 0,
            object: None,
            blocked_on: None,
            selects_on: Vec::new(),
            channel_at_place: None,
        }
    }

    #[test]
    fn a_thread_belongs_to_the_goroutine_whose_stack_holds_its_sp() {
        let mut goroutines = [
            in_syscall(1, 0xc000_2000, 0xc000_4000),
            in_syscall(2, 0xc000_0000, 0xc000_2000),
            in_syscall(3, 0xc001_0000, 0xc001_8000),
        ];
        let mut sorted: Vec<&mut Goroutine> = goroutines.iter_mut().collect();
        sorted.sort_by_key(|goroutine| goroutine.stack_lo);
        let goid = |sorted: &mut Vec<&mut Goroutine>, sp| on_stack(sorted, sp).map(|g| g.goid);
        assert_eq!(goid(&mut sorted, 0xc000_1f00), Some(2));
        assert_eq!(goid(&mut sorted, 0xc000_2000), Some(1));
        assert_eq!(goid(&mut sorted, 0xc001_7ff8), Some(3));
        // Between stacks, below them all, and a thread's own (g0) stack far away.
        assert_eq!(goid(&mut sorted, 0xc000_8000), None);
        assert_eq!(goid(&mut sorted, 0xbfff_fff8), None);
        assert_eq!(goid(&mut sorted, 0x7ffd_0000_0000), None);
    }
}
