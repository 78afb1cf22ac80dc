//! What the Go tests share: the program's own goroutine profile (served by the test
//! program's `net/http/pprof`) as the oracle, and the groups of goroutines of a tracer
//! profile.

use std::time::{Duration, Instant};

use crate::{GoroutineGroup, Profile, ProfileStack, WaitKind, goroutines_at, pprof_goroutines};

/// How long the program's own profile may take to show every goroutine parked.
const ORACLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls the program's own profile until `function` has `expected` goroutines.
pub fn wait_for_oracle(port: u16, function: &str, expected: u64) -> Vec<GoroutineGroup> {
    let deadline = Instant::now() + ORACLE_TIMEOUT;
    loop {
        let groups = pprof_goroutines(port);
        let count = goroutines_at(&groups, function);
        if count == expected {
            return groups;
        }
        assert!(
            Instant::now() < deadline,
            "the program's own profile shows {count} goroutines at {function}, expected {expected}: {groups:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The one stack (group of goroutines) whose call site is `function`, among those `pred`
/// accepts.
pub fn group<'a>(
    profile: &'a Profile,
    function: &str,
    pred: impl Fn(&ProfileStack) -> bool,
) -> &'a ProfileStack {
    let matching: Vec<&ProfileStack> = profile
        .stacks
        .iter()
        .filter(|stack| pred(stack) && stack.call_site() == function)
        .collect();
    let [stack] = matching.as_slice() else {
        panic!(
            "{} stacks at {function}, want one; stacks:\n{}",
            matching.len(),
            crate::top_stacks(profile, |_| true, 20)
        );
    };
    assert_eq!(stack.kind, WaitKind::Goroutine, "{}", crate::describe(stack));
    stack
}

/// The goroutines of a group: its goroutine ids, each counted once.
pub fn goroutines(stack: &ProfileStack) -> u64 {
    let ids = stack.stats.threads.len() as u64;
    assert_eq!(
        stack.stats.waits,
        ids,
        "waits and distinct goroutines differ: {}",
        crate::describe(stack)
    );
    ids
}
