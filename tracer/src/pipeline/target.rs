//! The process to trace, and the checks that must pass before any probe is loaded:
//! each failure is one line that says what to do.

use std::{
    fs, io,
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

/// A /proc text file that holds names a process chose (its comm in `stat` and `status`,
/// the paths it mapped, its cgroup's): invalid UTF-8 in them is replaced, so that an odd
/// name never makes a process unreadable.
pub fn read_proc_text(path: impl AsRef<Path>) -> io::Result<String> {
    let bytes = fs::read(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(invalid) => String::from_utf8_lossy(invalid.as_bytes()).into_owned(),
    })
}

/// `PF_KTHREAD` in the flags field of /proc/PID/stat (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// Where the kernel publishes its BTF; `TRACER_BTF_PATH` overrides it (tests use that
/// to play a kernel without BTF).
const DEFAULT_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Capabilities tracing needs are missing (see `NEEDED_CAPABILITIES`).
    #[error(
        "missing {0}: run as root, or grant them (setpriv --ambient-caps, systemd's \
         AmbientCapabilities=, a container's securityContext.capabilities)"
    )]
    MissingCapabilities(String),
    /// No such process.
    #[error("pid {0} does not exist")]
    NoSuchProcess(u32),
    /// `--comm` named no running process.
    #[error("no process is named {0:?}")]
    NoProcessNamed(String),
    /// `--cgroup` named no cgroup.
    #[error("{} is not a cgroup (no cgroup.procs in it)", .0.display())]
    NoCgroup(PathBuf),
    /// The process has exited, every thread of it, and waits for its parent to reap it.
    #[error("pid {0} has exited (a zombie waiting for its parent); nothing left to trace")]
    Zombie(u32),
    /// A thread id was given; the process is its thread group.
    #[error("pid {pid} is a thread of process {tgid}; give the process id {tgid}")]
    Thread { pid: u32, tgid: u32 },
    /// Kernel threads have no user stacks or syscalls to trace.
    #[error("pid {pid} ({comm}) is a kernel thread; give the pid of a user process")]
    KernelThread { pid: u32, comm: String },
    /// /proc/PID could not be read for another reason.
    #[error("cannot read /proc/{pid}/stat")]
    Unreadable {
        pid: u32,
        #[source]
        source: io::Error,
    },
    /// The probes need the kernel's BTF (CONFIG_DEBUG_INFO_BTF=y).
    #[error("this kernel has no BTF at {} (needs CONFIG_DEBUG_INFO_BTF=y)", .0.display())]
    NoBtf(PathBuf),
    /// pidfd_open failed, so the target's exit could not be watched.
    #[error("cannot watch pid {pid} for exit")]
    PidFd {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// A live user process; its pidfd pins its identity, so a reused pid cannot be
/// mistaken for it once opened.
#[derive(Debug)]
pub struct Target {
    pub pid: u32,
    /// The process name (/proc/PID/comm), its control characters written out: the
    /// process chose it, and it is printed on root's terminal.
    pub comm: String,
    /// Its command line (/proc/PID/cmdline), when readable.
    pub command_line: Option<Vec<String>>,
    /// Its cgroup v2 path (`/system.slice/redis.service`), when readable.
    pub cgroup: Option<String>,
    /// Becomes readable when the process exits.
    pub pidfd: OwnedFd,
}

impl Target {
    /// Checks that `pid` is a live user process and opens a pidfd on it.
    pub fn open(pid: u32) -> Result<Self, TargetError> {
        let stat = match read_proc_text(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(TargetError::NoSuchProcess(pid));
            }
            Err(source) => return Err(TargetError::Unreadable { pid, source }),
        };
        let ProcStat { comm, state, flags } =
            parse_stat(&stat).ok_or_else(|| TargetError::Unreadable {
                pid,
                source: io::Error::new(io::ErrorKind::InvalidData, "malformed stat line"),
            })?;
        if flags & PF_KTHREAD != 0 {
            return Err(TargetError::KernelThread { pid, comm });
        }
        // A main thread that called pthread_exit is a zombie while the others live on.
        if is_dead(state) && live_thread(pid) == pid {
            return Err(TargetError::Zombie(pid));
        }
        // /proc/TID exists for every thread too (hidden from listings): refuse a thread id.
        let tgid = read_proc_text(format!("/proc/{pid}/status")).ok().and_then(|status| {
            status.lines().find_map(|line| line.strip_prefix("Tgid:")?.trim().parse().ok())
        });
        if let Some(tgid) = tgid.filter(|&tgid| tgid != pid) {
            return Err(TargetError::Thread { pid, tgid });
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            let source = io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::ESRCH) {
                return Err(TargetError::NoSuchProcess(pid));
            }
            return Err(TargetError::PidFd { pid, source });
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let command_line = read_command_line(live_thread(pid));
        let comm = crate::report::escape_name(&comm).into_owned();
        let cgroup = process_cgroup(pid);
        Ok(Self { pid, comm, command_line, cgroup, pidfd })
    }

    /// Reads its name and cgroup again: a process that execs or moves changes them.
    pub fn refresh_names(&mut self) {
        if let Ok(comm) = read_proc_text(format!("/proc/{}/comm", self.pid)) {
            let comm = comm.strip_suffix('\n').unwrap_or(&comm);
            if comm != self.comm {
                self.comm = crate::report::escape_name(comm).into_owned();
            }
        }
        if let Some(cgroup) = process_cgroup(self.pid) {
            self.cgroup = Some(cgroup);
        }
    }

    /// Whether the process has exited (its pidfd polls readable).
    pub fn has_exited(&self) -> bool {
        use std::os::fd::AsRawFd as _;
        let mut poll =
            libc::pollfd { fd: self.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut poll, 1, 0) > 0 }
    }
}

/// A thread through which /proc and `process_vm_readv` still see process `pid`: `pid`
/// itself, unless its main thread has exited (`pthread_exit`) while others live on. Such
/// a main thread has given up the process's memory, files and namespaces, so
/// /proc/PID/maps, fd/ and cmdline read empty and `process_vm_readv(PID)` fails, while
/// /proc/TID of any live thread shows them all (task/ too lists every thread). `pid` when
/// no thread lives.
pub fn live_thread(pid: u32) -> u32 {
    let state = |dir: &str| -> Option<char> {
        parse_stat(&read_proc_text(format!("{dir}/stat")).ok()?).map(|stat| stat.state)
    };
    if state(&format!("/proc/{pid}")).is_none_or(|state| !is_dead(state)) {
        return pid;
    }
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return pid;
    };
    tasks
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&tid| {
            tid != pid && state(&format!("/proc/{pid}/task/{tid}")).is_some_and(|s| !is_dead(s))
        })
        .unwrap_or(pid)
}

/// A zombie (exited, not yet reaped) or a task being torn down.
fn is_dead(state: char) -> bool {
    state == 'Z' || state == 'X'
}

struct ProcStat {
    comm: String,
    /// R, S, D, Z, ... (proc_pid_stat(5)).
    state: char,
    flags: u64,
}

/// Field `n` (1-based, as proc_pid_stat(5) counts them; 3 or more) of a /proc/PID/stat
/// line, counted after the comm's closing parenthesis (the comm may hold spaces and
/// parentheses).
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    stat.get(stat.rfind(')')? + 1..)?.split_ascii_whitespace().nth(n.checked_sub(3)?)
}

/// Parses the comm and flags of a /proc/PID/stat line. The comm is in parentheses and
/// may itself hold spaces and parentheses, so fields are counted after the last ')'.
fn parse_stat(line: &str) -> Option<ProcStat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_string();
    // After ") ": state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9).
    let mut fields = line.get(close + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let flags = fields.nth(5)?.parse().ok()?;
    Some(ProcStat { comm, state, flags })
}

/// The command line of `pid` (/proc/PID/cmdline), when readable and not empty.
pub fn read_command_line(pid: u32) -> Option<Vec<String>> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = bytes
        .split(|&byte| byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    (!args.is_empty()).then_some(args)
}

/// Nanoseconds since the Unix epoch.
pub fn unix_ns(time: std::time::SystemTime) -> Option<u64> {
    let since_epoch = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since_epoch.as_nanos()).ok()
}

/// The processes `--pid` (each given), `--comm` (every process of that name but the
/// tracer) and `--cgroup` (every process in it and its descendants) select, in pid
/// order, each once.
pub fn select_processes(
    pids: &[u32],
    comm: Option<&str>,
    cgroup: Option<&Path>,
) -> Result<Vec<u32>, TargetError> {
    let mut selected: std::collections::BTreeSet<u32> = pids.iter().copied().collect();
    if let Some(cgroup) = cgroup {
        selected.extend(cgroup_processes(cgroup)?);
    }
    if let Some(name) = comm {
        let named = named_processes(name);
        if named.is_empty() {
            return Err(TargetError::NoProcessNamed(name.to_owned()));
        }
        selected.extend(named);
    }
    Ok(selected.into_iter().collect())
}

/// The processes named `name` now (see [`is_named`]), but the tracer.
pub fn named_processes(name: &str) -> Vec<u32> {
    let own = std::process::id();
    let Ok(proc) = std::fs::read_dir("/proc") else { return Vec::new() };
    proc.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/comm")).is_ok_and(|found| is_named(&found, name))
        })
        .collect()
}

/// The kernel keeps this many bytes of a process name (TASK_COMM_LEN - 1).
const COMM_LEN: usize = 15;

/// Whether `/proc/PID/comm`'s contents (`comm`, newline and all) are `name`, of which the
/// kernel keeps the first 15 bytes: `--comm my-payments-service` finds the process the
/// kernel calls `my-payments-ser`. A name of odd bytes is found as reports show it too:
/// control characters written out (`a\x09b`), bytes that are not UTF-8 as U+FFFD (which
/// is also what `--comm` makes of such bytes given raw).
pub fn is_named(comm: &[u8], name: &str) -> bool {
    let comm = comm.strip_suffix(b"\n").unwrap_or(comm);
    let bytes = name.as_bytes();
    if comm == &bytes[..bytes.len().min(COMM_LEN)] {
        return true;
    }
    let shown = String::from_utf8_lossy(comm);
    shown == name || crate::report::escape_name(&shown) == name
}

/// Every live user process on the host but this one (`--all`): kernel threads and
/// zombies left out.
pub fn user_processes() -> Vec<u32> {
    user_processes_except(&Default::default())
}

/// As `user_processes`, leaving out `known` unread: a daemon that looks for new
/// processes every second reads only the new ones' stat.
pub fn user_processes_except(known: &std::collections::BTreeSet<u32>) -> Vec<u32> {
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own && !known.contains(&pid))
        .filter(|pid| {
            let Ok(stat) = read_proc_text(format!("/proc/{pid}/stat")) else { return false };
            // A dead main thread with live threads behind it is still a process.
            parse_stat(&stat).is_some_and(|stat| {
                stat.flags & PF_KTHREAD == 0 && (!is_dead(stat.state) || live_thread(*pid) != *pid)
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// A cgroup given as a path: absolute, or relative to /sys/fs/cgroup (`system.slice/x.service`,
/// `unified/kubepods/pod…` on a hybrid host); it must exist.
pub fn cgroup_path(given: &Path) -> Result<PathBuf, TargetError> {
    let path = if given.is_absolute() {
        given.to_path_buf()
    } else {
        Path::new("/sys/fs/cgroup").join(given)
    };
    if !path.join("cgroup.procs").is_file() {
        return Err(TargetError::NoCgroup(path));
    }
    Ok(path)
}

/// The cgroup v2 path of process `pid` (the `0::` line of /proc/PID/cgroup), its control
/// characters written out (a container runtime names it).
pub fn process_cgroup(pid: u32) -> Option<String> {
    let text = read_proc_text(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    Some(crate::report::escape_name(path).into_owned())
}

/// The processes in `cgroup` and the cgroups below it (a pod's containers), from their
/// `cgroup.procs`; a cgroup removed meanwhile has none.
pub fn cgroup_processes(cgroup: &Path) -> Result<Vec<u32>, TargetError> {
    let mut pids = Vec::new();
    let mut pending = vec![cgroup.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|line| line.trim().parse::<u32>().ok()));
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        pending.extend(entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
    }
    if pids.is_empty() && !cgroup.exists() {
        return Err(TargetError::NoCgroup(cgroup.to_path_buf()));
    }
    // Not the tracer itself, run from a shell in the cgroup (as --comm and --all leave it).
    let own = std::process::id();
    pids.retain(|&pid| pid != own);
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// The capabilities tracing needs, by number (include/uapi/linux/capability.h), and what
/// for; root has them all. Nothing more: no CAP_SYS_ADMIN.
pub const NEEDED_CAPABILITIES: [(u32, &str, &str); 4] = [
    (39, "CAP_BPF", "loading the probes and their maps"),
    (38, "CAP_PERFMON", "the scheduler tracepoints, uprobes and the task iterator"),
    (19, "CAP_SYS_PTRACE", "reading another process's threads, stacks and descriptors"),
    (2, "CAP_DAC_READ_SEARCH", "opening another user's /proc/PID/task/TID/syscall and fd/"),
];

/// Tracing needs `NEEDED_CAPABILITIES` in the effective set; the error names each one
/// missing and what it is for.
pub fn check_capabilities() -> Result<(), TargetError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing = missing_capabilities(effective);
    if missing.is_empty() {
        return Ok(());
    }
    let plural = if missing.len() == 1 { "capability" } else { "capabilities" };
    Err(TargetError::MissingCapabilities(format!("{plural} {}", missing.join(", "))))
}

/// The needed capabilities not in `effective` (a CapEff bit mask), each with its use.
fn missing_capabilities(effective: u64) -> Vec<String> {
    NEEDED_CAPABILITIES
        .iter()
        .filter(|(bit, _, _)| effective & (1 << bit) == 0)
        .map(|(_, name, why)| format!("{name} ({why})"))
        .collect()
}

/// The kernel BTF file the probes need.
pub fn btf_path() -> Result<PathBuf, TargetError> {
    let path = std::env::var_os("TRACER_BTF_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BTF_PATH));
    if !path.is_file() {
        return Err(TargetError::NoBtf(path));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_matched_as_far_as_the_kernel_keeps_it() {
        assert!(is_named(b"worker\n", "worker"));
        assert!(!is_named(b"worker\n", "work"));
        assert!(!is_named(b"worker-2\n", "worker"));
        // /proc/PID/comm of `my-payments-service`: its first 15 bytes.
        assert!(is_named(b"my-payments-ser\n", "my-payments-service"));
        assert!(is_named(b"my-payments-ser\n", "my-payments-ser"));
        assert!(!is_named(b"my-payments-ser\n", "my-payments-se"));
        // Odd bytes: as reports write them out, and as --comm takes them given raw.
        assert!(is_named(b"a\tb\n", "a\\x09b"));
        assert!(is_named(b"\xff\xc3-odd\n", "\u{fffd}\u{fffd}-odd"));
        assert!(!is_named(b"\xff\xc3-odd\n", "\u{fffd}-odd"));
        assert!(!is_named(b"a\tb\n", "a\\x09"));
    }

    #[test]
    fn each_missing_capability_is_named_with_its_use() {
        let all = NEEDED_CAPABILITIES.iter().fold(0u64, |mask, (bit, _, _)| mask | 1 << bit);
        assert!(missing_capabilities(all).is_empty());
        assert!(missing_capabilities(u64::MAX).is_empty(), "root's set");
        let without_bpf = all & !(1 << 39);
        assert_eq!(
            missing_capabilities(without_bpf),
            ["CAP_BPF (loading the probes and their maps)"]
        );
        assert_eq!(missing_capabilities(0).len(), NEEDED_CAPABILITIES.len());
    }

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let line = "42 (my (odd) prog) S 1 42 42 0 -1 4194560 100 0 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.comm, "my (odd) prog");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.flags, 4194560);
    }

    #[test]
    fn kernel_thread_flag_is_seen() {
        let line = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0";
        let stat = parse_stat(line).unwrap();
        assert_ne!(stat.flags & PF_KTHREAD, 0);
    }

    #[test]
    fn zombie_is_refused() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not waited for: it stays a zombie until `child` is reaped below.
        while !read_proc_text(format!("/proc/{pid}/stat")).unwrap().contains(") Z ") {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(matches!(Target::open(pid), Err(TargetError::Zombie(p)) if p == pid));
        drop(child.wait_with_output());
    }

    #[test]
    fn a_live_process_is_read_through_itself() {
        assert_eq!(live_thread(std::process::id()), std::process::id());
    }

    #[test]
    fn a_thread_id_is_refused_with_its_process_id() {
        let (tid_sender, tid) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid takes no arguments.
            let _ = tid_sender.send(unsafe { libc::gettid() } as u32);
            let _ = wait.recv();
        });
        let tid = tid.recv().unwrap();
        let pid = std::process::id();
        assert!(matches!(
            Target::open(tid),
            Err(TargetError::Thread { pid: p, tgid }) if p == tid && tgid == pid
        ));
        drop(done);
        thread.join().unwrap();
    }

    #[test]
    fn own_process_is_a_user_process() {
        let target = Target::open(std::process::id()).unwrap();
        assert_eq!(target.pid, std::process::id());
        assert!(!target.comm.is_empty());
        assert!(target.command_line.as_ref().is_some_and(|args| !args.is_empty()));
        assert!(!target.has_exited());
    }
}
