//! Offsets of the kernel struct members the probes read (`struct task_struct` and a few
//! reached from it), in the running kernel, from its BTF.
//!
//! The scheduler probe reads the task being switched in (`next`), which is not the
//! current task, so no helper gives its thread-group id or name: it reads them at these
//! offsets. It also reads the clock the scheduler has just read for the switch (its run
//! queue's), reached from a task through the members of [`RqClockPath`]. aya-ebpf has no
//! CO-RE relocations, and aya does not expose the BTF it parses, so this walks the BTF type
//! section itself (include/uapi/linux/btf.h), once, only far enough to find those structs'
//! members.

use std::collections::HashMap;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

/// Byte offsets in the kernel's `struct task_struct`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `pid_t pid`: the thread id.
    pub pid: u32,
    /// `pid_t tgid`: the process id.
    pub tgid: u32,
    /// `char comm[16]`: the thread's name.
    pub comm: u32,
    /// `unsigned int __state`: 0 while running or runnable.
    pub state: u32,
    /// `int on_cpu`: whether it is still on a CPU.
    pub on_cpu: u32,
    /// `unsigned long nvcsw`, `nivcsw`: its voluntary and involuntary switches out.
    pub nvcsw: u32,
    pub nivcsw: u32,
}

/// Where a task's run queue's clock is: `task->se.cfs_rq->rq->clock`, the
/// `sched_clock_cpu` reading `__schedule` takes before every switch. `cfs_rq` has its
/// `rq` member only in kernels built with group scheduling (`CONFIG_FAIR_GROUP_SCHED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RqClockPath {
    /// `struct cfs_rq *` in the task: `se`'s offset plus `cfs_rq`'s in `sched_entity`.
    pub task_cfs_rq: u32,
    /// `struct rq *rq` in `struct cfs_rq`.
    pub cfs_rq_rq: u32,
    /// `u64 clock` in `struct rq`.
    pub rq_clock: u32,
}

/// Byte offsets in `struct task_struct` of what the queued-wake probe reads from a task it
/// reaches only by arithmetic (`tracer_queued_wake`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedWakeOffsets {
    /// `struct __call_single_node wake_entry`: the node `csd_queue_cpu` names.
    pub wake_entry: u32,
}

/// Byte offsets of what a sampled recording's pass in the kernel walks: from the
/// process's leader to its `signal_struct` and along the list of its threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadListOffsets {
    /// `struct signal_struct *signal` in `task_struct`.
    pub signal: u32,
    /// `struct list_head thread_node` in `task_struct`: its place in the list.
    pub thread_node: u32,
    /// `struct task_struct *group_leader` in `task_struct`.
    pub group_leader: u32,
    /// `struct list_head thread_head` in `signal_struct`: the list's head.
    pub thread_head: u32,
    /// `int nr_threads` in `signal_struct`: how long the list is.
    pub nr_threads: u32,
}

/// Byte offsets of the path from a task to the inode of one of its descriptors:
/// `task->files->fdt->fd[n]->f_inode->i_ino`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorInodePath {
    /// `struct files_struct *files` in `task_struct`.
    pub task_files: u32,
    /// `struct fdtable *fdt` in `files_struct`.
    pub files_fdt: u32,
    /// `unsigned int max_fds` and `struct file **fd` in `fdtable`.
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    /// `struct inode *f_inode` in `file`.
    pub file_inode: u32,
    /// `unsigned long i_ino` in `inode`.
    pub inode_ino: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelBtfError {
    #[error("the kernel BTF is malformed ({0})")]
    Malformed(&'static str),
    #[error("the kernel BTF has no struct task_struct with a {0} member")]
    MissingMember(&'static str),
}

/// The structs whose members the probes read: `task_struct`, the path to a run queue's
/// clock ([`RqClockPath`]), a task's arrivals on a CPU and its last time queued for one
/// (`sched_info`), a process's threads (`signal_struct`), and the path to a descriptor's
/// inode ([`DescriptorInodePath`]).
const STRUCTS_READ: [&str; 10] = [
    "task_struct",
    "sched_entity",
    "cfs_rq",
    "rq",
    "sched_info",
    "signal_struct",
    "files_struct",
    "fdtable",
    "file",
    "inode",
];

/// The members of the kernel structs the probes read, by struct and member name: byte
/// offsets found in one pass over the BTF blob (`/sys/kernel/btf/vmlinux`).
pub struct KernelStructs {
    members: HashMap<&'static str, HashMap<String, u32>>,
}

impl KernelStructs {
    pub fn read(btf: &[u8]) -> Result<Self, KernelBtfError> {
        Ok(Self { members: struct_members(btf, &STRUCTS_READ)? })
    }

    fn member(&self, owner: &str, name: &str) -> Option<u32> {
        self.members.get(owner)?.get(name).copied()
    }

    /// The offsets of the `task_struct` members the probes read.
    pub fn task_offsets(&self) -> Result<TaskOffsets, KernelBtfError> {
        let member = |name: &'static str| {
            self.member("task_struct", name).ok_or(KernelBtfError::MissingMember(name))
        };
        Ok(TaskOffsets {
            pid: member("pid")?,
            tgid: member("tgid")?,
            comm: member("comm")?,
            state: member("__state")?,
            on_cpu: member("on_cpu")?,
            nvcsw: member("nvcsw")?,
            nivcsw: member("nivcsw")?,
        })
    }

    /// Where a task counts its arrivals on a CPU (`sched_info.pcount`, which /proc's
    /// `schedstat` shows), or None when this kernel keeps no such count
    /// (`CONFIG_SCHED_INFO`).
    pub fn arrivals_offset(&self) -> Option<u32> {
        Some(self.member("task_struct", "sched_info")? + self.member("sched_info", "pcount")?)
    }

    /// Where a task keeps when it was last put on a run queue (`sched_info.last_queued`,
    /// by that queue's clock), or None as for `arrivals_offset`.
    pub fn last_queued_offset(&self) -> Option<u32> {
        Some(self.member("task_struct", "sched_info")? + self.member("sched_info", "last_queued")?)
    }

    /// Where a task keeps when it was last switched in (`sched_info.last_arrival`, by the
    /// run queue's clock), or None as for `arrivals_offset`.
    pub fn last_arrival_offset(&self) -> Option<u32> {
        Some(
            self.member("task_struct", "sched_info")?
                + self.member("sched_info", "last_arrival")?,
        )
    }

    /// Where a task keeps its memory (`mm`, NULL once an exiting thread has let go of
    /// it), or None when this kernel's task has no such member.
    pub fn mm_offset(&self) -> Option<u32> {
        self.member("task_struct", "mm")
    }

    /// Where a task keeps the base of its kernel stack (`stack`), below whose top its user
    /// registers are saved: the queued-wake probe and the passes in the kernel read them
    /// there. None when this kernel's task has no such member.
    pub fn stack_offset(&self) -> Option<u32> {
        self.member("task_struct", "stack")
    }

    /// Where a task keeps the node of a wake queued to its CPU (`wake_entry`), or None
    /// when this kernel lacks it.
    pub fn queued_wake_offsets(&self) -> Option<QueuedWakeOffsets> {
        Some(QueuedWakeOffsets { wake_entry: self.member("task_struct", "wake_entry")? })
    }

    /// Where a pass in the kernel finds a process's threads and their registers, or None
    /// when this kernel lacks one of the members (`thread_node` and `thread_head` came in
    /// 6.7).
    pub fn thread_list_offsets(&self) -> Option<ThreadListOffsets> {
        Some(ThreadListOffsets {
            signal: self.member("task_struct", "signal")?,
            thread_node: self.member("task_struct", "thread_node")?,
            group_leader: self.member("task_struct", "group_leader")?,
            thread_head: self.member("signal_struct", "thread_head")?,
            nr_threads: self.member("signal_struct", "nr_threads")?,
        })
    }

    /// The members leading from a task to one of its descriptors' inode, or None when
    /// this kernel lacks one of them.
    pub fn descriptor_inode_path(&self) -> Option<DescriptorInodePath> {
        Some(DescriptorInodePath {
            task_files: self.member("task_struct", "files")?,
            files_fdt: self.member("files_struct", "fdt")?,
            fdtable_max_fds: self.member("fdtable", "max_fds")?,
            fdtable_fd: self.member("fdtable", "fd")?,
            file_inode: self.member("file", "f_inode")?,
            inode_ino: self.member("inode", "i_ino")?,
        })
    }

    /// The members leading from a task to its run queue's clock, or None when this
    /// kernel lacks one of them.
    pub fn rq_clock_path(&self) -> Option<RqClockPath> {
        Some(RqClockPath {
            task_cfs_rq: self.member("task_struct", "se")?
                + self.member("sched_entity", "cfs_rq")?,
            cfs_rq_rq: self.member("cfs_rq", "rq")?,
            rq_clock: self.member("rq", "clock")?,
        })
    }
}

/// Byte offsets of the named members of the first struct called each of `wanted`, in one
/// pass over the type section.
fn struct_members(
    btf: &[u8],
    wanted: &[&'static str],
) -> Result<HashMap<&'static str, HashMap<String, u32>>, KernelBtfError> {
    use KernelBtfError::Malformed;
    let u16_at = |at: usize| btf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at =
        |at: usize| btf.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    if u16_at(0) != Some(BTF_MAGIC) {
        return Err(Malformed("bad magic: not a little-endian BTF blob"));
    }
    let header = |at| u32_at(at).map(|v| v as usize).ok_or(Malformed("truncated header"));
    let (header_len, type_off, type_len, str_off, str_len) =
        (header(4)?, header(8)?, header(12)?, header(16)?, header(20)?);
    let types = header_len + type_off;
    let strings = header_len + str_off;
    if btf.len() < types + type_len || btf.len() < strings + str_len {
        return Err(Malformed("sections run past the end"));
    }
    let name_at = |offset: u32| -> &[u8] {
        let start = strings + offset as usize;
        let rest = btf.get(start..strings + str_len).unwrap_or(&[]);
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };
    let mut found = HashMap::new();
    let mut at = types;
    while at + 12 <= types + type_len && found.len() < wanted.len() {
        let name = u32_at(at).ok_or(Malformed("truncated type"))?;
        let info = u32_at(at + 4).ok_or(Malformed("truncated type"))?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        at += 12;
        let struct_name = (kind == KIND_STRUCT)
            .then(|| wanted.iter().find(|wanted| name_at(name) == wanted.as_bytes()))
            .flatten()
            .filter(|wanted| !found.contains_key(**wanted));
        if let Some(struct_name) = struct_name {
            let mut members = HashMap::new();
            for member in 0..vlen {
                let base = at + member * 12;
                let name = u32_at(base).ok_or(Malformed("truncated member"))?;
                let offset = u32_at(base + 8).ok_or(Malformed("truncated member"))?;
                // With kind_flag the low 24 bits are the bit offset, the high 8 a bitfield
                // size; without, the whole word is the bit offset.
                let bits = if kind_flag { offset & 0xff_ffff } else { offset };
                members.insert(String::from_utf8_lossy(name_at(name)).into_owned(), bits / 8);
            }
            found.insert(*struct_name, members);
        }
        at += trailing_bytes(kind, vlen).ok_or(Malformed("unknown type kind"))?;
    }
    Ok(found)
}

/// Bytes that follow a type's 12-byte header, by kind (include/uapi/linux/btf.h).
fn trailing_bytes(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        // INT, VAR, DECL_TAG
        1 | 14 | 17 => 4,
        // ARRAY
        3 => 12,
        // STRUCT, UNION, DATASEC, ENUM64
        4 | 5 | 15 | 19 => vlen * 12,
        // ENUM, FUNC_PROTO
        6 | 13 => vlen * 8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob of one INT type and `struct task_struct { unsigned int __state; int on_cpu;
    /// int pid; int tgid; unsigned long nvcsw, nivcsw; char comm[16]; }` (every member
    /// typed as the INT: only offsets matter) with kind_flag bitfield encoding on the struct.
    fn blob() -> Vec<u8> {
        let strings =
            b"\0int\0task_struct\0__state\0on_cpu\0pid\0tgid\0nvcsw\0nivcsw\0comm\0".to_vec();
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() as u32 + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        // [1] int: INT, size 4, then its encoding word.
        push(&[name("int"), 1 << 24, 4, 32]);
        // [2] struct task_struct, kind_flag set, 7 members.
        push(&[name("task_struct"), (1 << 31) | (4 << 24) | 7, 48]);
        push(&[name("__state"), 1, 0]);
        push(&[name("on_cpu"), 1, 32]);
        push(&[name("pid"), 1, 64]);
        push(&[name("tgid"), 1, 96]);
        push(&[name("nvcsw"), 1, 128]);
        push(&[name("nivcsw"), 1, 192]);
        push(&[name("comm"), 1, (8 << 24) | 256]);
        let mut btf = Vec::new();
        btf.extend(BTF_MAGIC.to_le_bytes());
        btf.extend([1u8, 0]);
        for word in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            btf.extend(word.to_le_bytes());
        }
        btf.extend(types);
        btf.extend(strings);
        btf
    }

    #[test]
    fn finds_task_struct_members_through_other_types() {
        assert_eq!(
            KernelStructs::read(&blob()).unwrap().task_offsets().unwrap(),
            TaskOffsets { pid: 8, tgid: 12, comm: 32, state: 0, on_cpu: 4, nvcsw: 16, nivcsw: 24 }
        );
    }

    #[test]
    fn refuses_foreign_or_truncated_blobs() {
        assert!(matches!(KernelStructs::read(b"nope"), Err(KernelBtfError::Malformed(_))));
        let mut truncated = blob();
        truncated.truncate(40);
        assert!(matches!(KernelStructs::read(&truncated), Err(KernelBtfError::Malformed(_))));
    }

    #[test]
    fn the_running_kernels_task_struct_has_every_member() {
        let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("this machine has BTF");
        let structs = KernelStructs::read(&btf).unwrap();
        let offsets = structs.task_offsets().unwrap();
        assert!(offsets.tgid == offsets.pid + 4 && offsets.comm > offsets.tgid, "{offsets:?}");
        // __state leads the struct after thread_info; the switch counts sit side by side.
        assert!(
            offsets.state < offsets.on_cpu && offsets.nivcsw == offsets.nvcsw + 8,
            "{offsets:?}"
        );
        // This kernel has group scheduling (the probes then read the switch's clock).
        let path = structs.rq_clock_path().expect("cfs_rq has an rq member");
        assert!(path.task_cfs_rq > offsets.on_cpu && path.rq_clock > 0, "{path:?}");
        // And counts arrivals (its /proc/PID/schedstat has them).
        let arrivals = structs.arrivals_offset().expect("task_struct has sched_info");
        assert!(arrivals > offsets.on_cpu, "{arrivals}");
        let last_queued = structs.last_queued_offset().expect("sched_info has last_queued");
        assert!(last_queued > arrivals, "{last_queued} {arrivals}");
        // sched_info ends with the last arrival and the last queueing, each a u64.
        let last_arrival = structs.last_arrival_offset().expect("sched_info has last_arrival");
        assert_eq!(last_arrival + 8, last_queued);
        // The stack pointer leads the struct after __state; the wake node follows on_cpu.
        assert!(structs.mm_offset().is_some_and(|mm| mm > offsets.state), "task_struct has mm");
        let queued = structs.queued_wake_offsets().expect("task_struct has wake_entry");
        let threads = structs.thread_list_offsets().expect("6.18 lists a group's threads");
        assert!(threads.signal > threads.group_leader && threads.thread_head > 0, "{threads:?}");
        assert!(threads.nr_threads > 0 && threads.nr_threads != threads.thread_head, "{threads:?}");
        assert_eq!(structs.stack_offset(), Some(offsets.state + 8), "{offsets:?}");
        assert!(queued.wake_entry > offsets.on_cpu && queued.wake_entry < arrivals, "{queued:?}");
        // A descriptor's inode: fdtable's max_fds leads it, its fd array follows.
        let descriptors = structs.descriptor_inode_path().expect("the path to an inode");
        assert!(descriptors.task_files > offsets.comm, "{descriptors:?}");
        assert!(descriptors.fdtable_max_fds == 0 && descriptors.fdtable_fd == 8, "{descriptors:?}");
        assert!(descriptors.file_inode > 0 && descriptors.inode_ino > 0, "{descriptors:?}");
    }

    #[test]
    fn a_kernel_without_the_run_queue_members_has_no_clock_path() {
        let structs = KernelStructs::read(&blob()).unwrap();
        assert_eq!(structs.rq_clock_path(), None);
        assert_eq!(structs.queued_wake_offsets(), None);
        assert_eq!(structs.arrivals_offset(), None);
        assert_eq!(structs.last_queued_offset(), None);
        assert_eq!(structs.last_arrival_offset(), None);
    }
}
