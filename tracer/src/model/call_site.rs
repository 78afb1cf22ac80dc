//! The call-site policy: which frame of a stack a reader looks for, per language. The
//! runtime (libc, a language's standard library and scheduler) is skipped, as a reader
//! would skip it.

use tracer_common::WaitKind;

use crate::python::is_runtime_file;
use crate::stacks::{Frame, PYTHON_MODULE, UNKNOWN_FRAME as UNKNOWN};

/// Whose conventions name a stack's frames, and so which frames are the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    /// Native code: C through libc, Rust and its std.
    Native,
    /// Go, by the names in `.gopclntab`.
    Go,
}

impl Language {
    /// The language of a stack waiting in `kind`: goroutines are Go's, threads native.
    pub fn of(kind: WaitKind) -> Self {
        match kind {
            WaitKind::Goroutine => Language::Go,
            _ => Language::Native,
        }
    }
}

/// The frame of `frames` (root first) a reader looks for, by the rule of `language`.
pub fn call_site(frames: &[Frame], language: Language) -> &str {
    match language {
        Language::Native => native_call_site(frames),
        Language::Go => go_call_site(frames),
    }
}

/// The innermost frame in the program's own code: its executable or a library of its own
/// (one it links or loads with dlopen), not the system's C and C++ runtime libraries, not
/// Rust's std or the C runtime's start-up code. Falls back to the call the program made
/// into the C library (`___pthread_cond_wait`, the outermost of the leaf's C library
/// frames: a stripped server's threads in a condition variable read
/// `__futex_abstimed_wait_common64`, which says only that they wait), then to the
/// innermost named frame. A thread that runs Python is named by its Python frames.
fn native_call_site(frames: &[Frame]) -> &str {
    if let Some(site) = python_call_site(frames) {
        return site;
    }
    let is_own = |frame: &&Frame| {
        !is_native_runtime(&frame.name)
            && !frame.file.as_deref().is_some_and(is_rust_library_file)
            && (frame.module_is_main
                // `[unknown]`, `[vdso]`: not a file of the program's.
                || !frame.module.starts_with('[') && !is_system_runtime_module(&frame.module))
    };
    // Only where something outside the C library made the call (a stack of the C
    // library alone, a thread it started, has no such call).
    let called_into_runtime = || {
        let in_runtime =
            |frame: &&Frame| frame.name != UNKNOWN && is_system_runtime_module(&frame.module);
        let run = frames.iter().rev().take_while(in_runtime).count();
        (run > 0 && run < frames.len()).then(|| &frames[frames.len() - run])
    };
    frames
        .iter()
        .rev()
        .find(is_own)
        .or_else(called_into_runtime)
        .or_else(|| frames.iter().rev().find(|frame| frame.name != UNKNOWN))
        .map_or(UNKNOWN, |frame| frame.name.as_str())
}

/// How far up from a shared call site its stacks' callers are compared: a wait helper is
/// reached through a wrapper or two (PostgreSQL's `WaitLatch` over `WaitEventSetWait`);
/// further up, stacks part by who called the caller's caller (a lock wait from an update
/// or from a tuple lock), which splits one place into many rows.
const CALLERS_COMPARED: usize = 4;

/// For stacks that share the call site `site` (each root first), the first caller of the
/// site where each one's path differs from the nearest other's (`ProcSleep`, `pg_sleep`,
/// `BackgroundWriterMain` for three stacks through PostgreSQL's `WaitEventSetWait`): a
/// program's own wait helper, under every lock wait, sleep and idle loop alike, names no
/// place by itself. None for a stack whose callers no other's differ from (the same, or
/// the same as far as the shorter goes) and for a Python stack (named by its Python
/// frames, among the interpreter's); the caller leaves out Go's and tasks'.
pub fn callers_that_differ<'a>(stacks: &[&'a [Frame]], site: &str) -> Vec<Option<&'a str>> {
    let callers: Vec<Option<Vec<&'a str>>> = stacks
        .iter()
        .map(|frames| {
            if frames.iter().any(|frame| frame.module == PYTHON_MODULE) {
                return None;
            }
            let at = frames.iter().rposition(|frame| frame.name == site)?;
            Some(
                frames[..at].iter().rev().take(CALLERS_COMPARED).map(|f| f.name.as_str()).collect(),
            )
        })
        .collect();
    // Each path once (a pile-up is thousands of one path), sorted: the path sharing the
    // longest start with a path is then a neighbour's.
    let mut paths: Vec<&Vec<&'a str>> = callers.iter().flatten().collect();
    paths.sort();
    paths.dedup();
    let shared = |a: &[&str], b: &[&str]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    // A path that is the start of another is the same as far as it goes (a stack cut
    // short, or read to a shallower root): no difference.
    let part_of = |a: &[&str], b: &[&str]| shared(a, b) == a.len().min(b.len());
    let differ_at: Vec<Option<&'a str>> = paths
        .iter()
        .enumerate()
        .map(|(place, mine)| {
            let differs = |other: &&&Vec<&str>| !part_of(mine, other);
            let before = paths[..place].iter().rev().find(differs);
            let after = paths[place + 1..].iter().find(differs);
            let depth = before.into_iter().chain(after).map(|other| shared(mine, other)).max()?;
            // An unnamed caller names nothing: the next named one up, within the compared.
            mine[depth..].iter().find(|name| **name != UNKNOWN).copied()
        })
        .collect();
    callers
        .iter()
        .map(|path| {
            let path = path.as_ref()?;
            let place = paths.binary_search(&path).ok()?;
            differ_at[place]
        })
        .collect()
}

/// The innermost Python frame of the program's own code (not the standard library's:
/// `queue`, `threading`, `socket` are how it waits), else the innermost Python frame;
/// `None` for a stack without Python frames.
fn python_call_site(frames: &[Frame]) -> Option<&str> {
    let python = || frames.iter().rev().filter(|frame| frame.module == PYTHON_MODULE);
    python()
        .find(|frame| !frame.file.as_deref().is_some_and(is_runtime_file))
        .or_else(|| python().next())
        .map(|frame| frame.name.as_str())
}

/// The system libraries a C, C++ or Rust program waits through: the C library (with the
/// loader and glibc's former satellites), the C++ runtimes and the unwinder. A frame in
/// them is how the program waits, not where.
fn is_system_runtime_module(module: &str) -> bool {
    const SYSTEM_RUNTIME: [&str; 13] = [
        "libc.so",
        "libc-",
        "ld-linux",
        "ld-musl",
        "libc.musl",
        "libpthread",
        "libdl.so",
        "librt.so",
        "libm.so",
        "libstdc++",
        "libc++",
        "libgcc_s",
        "libunwind",
    ];
    let file = module.rsplit('/').next().unwrap_or(module);
    SYSTEM_RUNTIME.iter().any(|prefix| file.starts_with(prefix))
}

/// The innermost frame outside Go's standard library (so `main.writeToBackend`, not
/// `internal/poll.runtime_pollWait`). A goroutine of the standard library's own (a
/// net/http server's connection, an HTTP client's read loop) has none: its site is the
/// function it was started in, outside package runtime (`net/http.(*conn).serve`, which
/// says more than the poller it waits in). Else the leaf.
fn go_call_site(frames: &[Frame]) -> &str {
    let names = || frames.iter().map(|frame| frame.name.as_str());
    names()
        .rev()
        .find(|name| !is_go_standard_library(name))
        .or_else(|| names().find(|name| !name.starts_with("runtime.") && !is_go_wrapper(name)))
        .or_else(|| frames.last().map(|frame| frame.name.as_str()))
        .unwrap_or(UNKNOWN)
}

/// The compiler's wrapper for a `go f(x)` statement (`net/http.(*Server).Serve.gowrap3`,
/// Go 1.22+): the goroutine starts in it, but the function it calls is what it runs.
fn is_go_wrapper(name: &str) -> bool {
    name.rsplit('.').next().is_some_and(|last| last.starts_with("gowrap"))
}

/// Functions of Rust's std/core/alloc and of the C runtime's start-up code, which a
/// statically linked program carries in its own executable.
fn is_native_runtime(name: &str) -> bool {
    const RUNTIME_PATHS: [&str; 3] = ["std::", "core::", "alloc::"];
    const RUNTIME_PREFIXES: [&str; 7] =
        ["__rust", "rust_panic", "rust_begin_unwind", "_start", "__libc_", "start_thread", "["];
    // An impl's methods start with its type: `<std::fs::File as std::io::Read>::read`, or
    // a reference or pointer to it (`<&std::os::unix::net::UnixStream as
    // std::io::Write>::write`).
    let path = name.strip_prefix('<').map_or(name, |inner| {
        ["&mut ", "&", "*const ", "*mut "]
            .iter()
            .find_map(|pointer| inner.strip_prefix(pointer))
            .unwrap_or(inner)
    });
    RUNTIME_PATHS.iter().any(|runtime| path.starts_with(runtime))
        || RUNTIME_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        // `<T as core::ops::FnOnce>::call_once` style names are the runtime too.
        || name.starts_with('<') && name.contains(" as core::ops::function::")
}

/// A source file of Rust's own library (std, core, alloc, and the crates std carries), as
/// a toolchain's debug info names it: `/rustc/<commit>/library/std/src/…`, `/rust/deps/…`,
/// or a rust-src's `…/library/core/src/…`. Functions inlined from it are named without
/// their path (`lock<u64>`, `wait<()>`), so their file tells they are std's.
fn is_rust_library_file(file: &str) -> bool {
    const LIBRARY_DIRECTORIES: [&str; 3] =
        ["/library/std/src/", "/library/core/src/", "/library/alloc/src/"];
    file.starts_with("/rustc/")
        || file.starts_with("/rust/deps/")
        || LIBRARY_DIRECTORIES.iter().any(|directory| file.contains(directory))
}

/// Go's standard-library packages have no dot in their first path element ("net/http",
/// "internal/poll", "runtime"); "main" is the program's own. Unnamed frames
/// (`[unknown 0x…]`, `[stack lost]`) are not the program either.
pub fn is_go_standard_library(function: &str) -> bool {
    if function.starts_with('[') {
        return true;
    }
    let package_end = function.rfind('/').map_or(0, |slash| slash + 1);
    let package = match function[package_end..].find('.') {
        Some(dot) => &function[..package_end + dot],
        None => function,
    };
    let first = package.split('/').next().unwrap_or_default();
    package != "main" && !first.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go_frames(names: &[&str]) -> Vec<Frame> {
        // Leaf first as written, root first as stored.
        names.iter().rev().map(|name| Frame::unknown_named(name, 0)).collect()
    }

    fn native_frame(name: &str, module: &str, main: bool) -> Frame {
        Frame { module: module.to_owned(), module_is_main: main, ..Frame::unknown_named(name, 0) }
    }

    #[test]
    fn native_call_site_is_the_innermost_frame_of_the_programs_own_modules() {
        // Root first: main calls into a library it loaded with dlopen, which polls.
        let plugin = [
            native_frame("_start", "app", true),
            native_frame("main", "app", true),
            native_frame("late_library_wait", "liblate.so", false),
            native_frame("__GI___poll", "libc.so.6", false),
        ];
        assert_eq!(call_site(&plugin, Language::Native), "late_library_wait");
        // The C++ runtime's condition variable is how it waits, not where.
        let cxx = [
            native_frame("main", "app", true),
            native_frame("worker", "app", true),
            native_frame("std::condition_variable::wait", "libstdc++.so.6", false),
            native_frame("pthread_cond_wait", "libc.so.6", false),
        ];
        assert_eq!(call_site(&cxx, Language::Native), "worker");
        // Rust's std is linked into the executable: its impls are the runtime too, on a
        // type or on a reference to it.
        let rust = [
            native_frame("app::reporter", "app", true),
            native_frame("app::write_to_backend", "app", true),
            native_frame("std::io::Write::write_all", "app", true),
            native_frame(
                "<&std::os::unix::net::stream::UnixStream as std::io::Write>::write",
                "app",
                true,
            ),
            native_frame("<std::net::tcp::TcpStream as std::io::Write>::write", "app", true),
            native_frame("<&mut alloc::vec::Vec<u8> as std::io::Write>::write", "app", true),
            native_frame("__send", "libc.so.6", false),
        ];
        assert_eq!(call_site(&rust, Language::Native), "app::write_to_backend");
        // Nothing of the program's own (after an exec, the old image knows none of it).
        let unknown = [
            native_frame(UNKNOWN, UNKNOWN, false),
            native_frame(
                "__futex_abstimed_wait_common",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                false,
            ),
        ];
        assert_eq!(call_site(&unknown, Language::Native), "__futex_abstimed_wait_common");
        // A stripped program's thread in a condition variable: the call it made into libc.
        let stripped = [
            native_frame("clone3", "libc.so.6", false),
            native_frame("start_thread", "libc.so.6", false),
            native_frame(UNKNOWN, "memcached", true),
            native_frame("___pthread_cond_wait", "libc.so.6", false),
            native_frame("__pthread_cond_wait_common", "libc.so.6", false),
            native_frame("__futex_abstimed_wait_common64", "libc.so.6", false),
        ];
        assert_eq!(call_site(&stripped, Language::Native), "___pthread_cond_wait");
    }

    #[test]
    fn rust_std_inlined_under_its_short_debug_name_is_told_by_its_file() {
        let in_file = |name: &str, file: &str| Frame {
            file: Some(file.to_owned()),
            ..native_frame(name, "app", true)
        };
        let std = "/rustc/254b59607d4417e9dffbc307138ae5c86280fe4c/library/std/src";
        // A mutex locked in the program, as line-tables-only debug info names its frames.
        let lock = [
            in_file("tokio_app::update_cache_slowly", "/src/app/src/main.rs"),
            in_file("lock<u64>", &format!("{std}/sync/poison/mutex.rs")),
            in_file("lock", &format!("{std}/sys/sync/mutex/futex.rs")),
            in_file("<std::sys::sync::mutex::futex::Mutex>::lock_contended", "futex.rs"),
            native_frame("syscall", "libc.so.6", false),
        ];
        assert_eq!(call_site(&lock, Language::Native), "tokio_app::update_cache_slowly");
        // std's own dependencies, and a toolchain's rust-src.
        let deps = [
            in_file("app::index", "src/index.rs"),
            in_file("find<u32>", "/rust/deps/hashbrown-0.15.2/src/raw/mod.rs"),
            in_file(
                "wait<()>",
                "/root/.rustup/toolchains/x/lib/rustlib/src/rust/library/core/src/x.rs",
            ),
        ];
        assert_eq!(call_site(&deps, Language::Native), "app::index");
    }

    #[test]
    fn stacks_through_one_wait_helper_are_told_apart_by_the_first_caller_that_differs() {
        let stack = |callers: &[&str]| -> Vec<Frame> {
            let mut frames: Vec<Frame> =
                callers.iter().rev().map(|name| native_frame(name, "postgres", true)).collect();
            frames.push(native_frame("WaitEventSetWait", "postgres", true));
            frames.push(native_frame("epoll_wait", "libc.so.6", false));
            frames
        };
        // Innermost caller first, as a reader goes up from the helper.
        let stacks = [
            stack(&["WaitLatch", "ProcSleep", "LockAcquireExtended", "XactLockTableWait"]),
            stack(&["WaitLatch", "ProcSleep", "LockAcquireExtended", "LockTuple"]),
            stack(&["WaitLatch", "pg_sleep", "ExecInterpExpr"]),
            stack(&["WaitLatch", "pg_sleep", "ExecInterpExpr"]),
            stack(&["WaitLatch", "BackgroundWriterMain"]),
            // Cut short: told apart only as far as it goes (from the client's read).
            stack(&["WaitLatch"]),
            stack(&["secure_read", "pq_recvbuf"]),
        ];
        let frames: Vec<&[Frame]> = stacks.iter().map(|frames| &frames[..]).collect();
        assert_eq!(
            callers_that_differ(&frames, "WaitEventSetWait"),
            [
                Some("XactLockTableWait"),
                Some("LockTuple"),
                Some("pg_sleep"),
                Some("pg_sleep"),
                Some("BackgroundWriterMain"),
                Some("WaitLatch"),
                Some("secure_read"),
            ]
        );
        // One path (or paths that differ in nothing they both have): no caller named.
        let alike = [stack(&["worker", "main"]), stack(&["worker"])];
        let frames: Vec<&[Frame]> = alike.iter().map(|frames| &frames[..]).collect();
        assert_eq!(callers_that_differ(&frames, "WaitEventSetWait"), [None, None]);
    }

    fn python_frame(name: &str, file: &str) -> Frame {
        Frame {
            module: PYTHON_MODULE.to_owned(),
            file: Some(file.to_owned()),
            ..Frame::unknown_named(name, 0)
        }
    }

    #[test]
    fn python_call_site_is_the_innermost_python_frame_outside_the_standard_library() {
        // Root first: a handler thread putting on a full queue, through CPython's C.
        let handler = [
            native_frame("start_thread", "libc.so.6", false),
            python_frame(
                "Thread._bootstrap (threading.py:995)",
                "/usr/lib/python3.11/threading.py",
            ),
            python_frame("handler (pypileup.py:31)", "/srv/app/pypileup.py"),
            python_frame("report_stat (pypileup.py:26)", "/srv/app/pypileup.py"),
            python_frame("Queue.put (queue.py:140)", "/usr/lib/python3.11/queue.py"),
            python_frame("Condition.wait (threading.py:320)", "/usr/lib/python3.11/threading.py"),
            native_frame("lock_PyThread_acquire_lock", "python3.11", true),
            native_frame("__futex_abstimed_wait_common", "libc.so.6", false),
        ];
        assert_eq!(call_site(&handler, Language::Native), "report_stat (pypileup.py:26)");
        // A library of the program's (site-packages) is its own code.
        let library = [
            python_frame("main (app.py:3)", "/srv/app.py"),
            python_frame(
                "Session.post (api.py:115)",
                "/venv/lib/python3.11/site-packages/requests/api.py",
            ),
            python_frame("socket.sendall (socket.py:1)", "/usr/lib/python3.11/socket.py"),
        ];
        assert_eq!(call_site(&library, Language::Native), "Session.post (api.py:115)");
        // Only the runtime's frames: the innermost Python one.
        let runtime = [
            python_frame(
                "Thread._bootstrap (threading.py:995)",
                "/usr/lib/python3.11/threading.py",
            ),
            python_frame("Event.wait (threading.py:622)", "/usr/lib/python3.11/threading.py"),
            native_frame("sem_clockwait", "libc.so.6", false),
        ];
        assert_eq!(call_site(&runtime, Language::Native), "Event.wait (threading.py:622)");
    }

    #[test]
    fn go_call_site_is_the_innermost_frame_outside_the_standard_library() {
        let site = |names: &[&str]| call_site(&go_frames(names), Language::Go).to_owned();
        let io = [
            "runtime.gopark",
            "internal/poll.runtime_pollWait",
            "net.(*conn).Write",
            "main.writeToBackend",
        ];
        assert_eq!(site(&io), "main.writeToBackend");
        assert_eq!(
            site(&["runtime.gopark", "github.com/x/y.(*T).Run", "main.main"]),
            "github.com/x/y.(*T).Run"
        );
        assert_eq!(
            site(&["runtime.gopark", "net/http.(*Server).Serve", "runtime.main"]),
            "net/http.(*Server).Serve"
        );
        let http_connection = [
            "runtime.gopark",
            "internal/poll.runtime_pollWait",
            "net.(*conn).Read",
            "net/http.(*connReader).Read",
            "bufio.(*Reader).fill",
            "net/http.(*conn).serve",
            "net/http.(*Server).Serve.gowrap3",
        ];
        assert_eq!(site(&http_connection), "net/http.(*conn).serve");
        assert_eq!(site(&["runtime.gopark", "runtime.bgsweep"]), "runtime.gopark");
    }

    #[test]
    fn go_standard_library_packages() {
        assert!(is_go_standard_library("runtime.gopark"));
        assert!(is_go_standard_library("net/http.(*conn).serve"));
        assert!(!is_go_standard_library("main.receiver"));
        assert!(!is_go_standard_library("example.com/a/b.f"));
    }
}
