//! Spike: the sampler's passes made by the kernel's timer; drains them every N ms and
//! prints what they held. `ticks PID SECONDS DRAIN_MS`.
use std::collections::HashSet;
use std::time::{Duration, Instant};

use tracer::probes::Probes;
use tracer_common::{Counter, TICK_LOOK, TICK_STACK, TickLook, TickStack};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let pid: u32 = args[1].parse()?;
    let secs: u64 = args.get(2).map_or(Ok(5), |s| s.parse())?;
    let drain_ms: u64 = args.get(3).map_or(Ok(250), |s| s.parse())?;
    let btf = tracer::pipeline::target::btf_path()?;
    let mut probes = Probes::open_for_reading(pid, &btf)?;
    if let Err(err) = probes.attach_ticks(49) { let mut e: &dyn std::error::Error = &err; loop { eprintln!("{e}"); match e.source() { Some(s) => e = s, None => break } } std::process::exit(1); }
    let mut ring = probes.take_ticks()?;
    let started = Instant::now();
    let (mut looks, mut blocked, mut stacks, mut drains) = (0u64, 0u64, 0u64, 0u64);
    let mut passes = HashSet::new();
    let mut distinct = HashSet::new();
    let mut first_look: Option<TickLook> = None;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(drain_ms));
        drains += 1;
        while let Some(item) = ring.next() {
            let tag = u32::from_ne_bytes(item[..4].try_into()?);
            match tag {
                TICK_LOOK => {
                    // SAFETY: a TickLook the probe wrote whole.
                    let look: TickLook = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    looks += 1;
                    passes.insert(look.pass);
                    if look.look.state != 0 && look.look.on_cpu == 0 {
                        blocked += 1;
                    }
                    first_look.get_or_insert(look);
                }
                TICK_STACK => {
                    // SAFETY: as above.
                    let stack: &TickStack = unsafe { &*item.as_ptr().cast() };
                    stacks += 1;
                    let len = (stack.len as usize).min(512);
                    distinct.insert((stack.tid, stack.stack[..len].to_vec()));
                }
                _ => {}
            }
        }
    }
    let counters = probes.counters()?;
    println!(
        "drains {drains} passes {} looks {looks} blocked {blocked} stacks {stacks} distinct(tid, first 512 B) {}",
        passes.len(),
        distinct.len()
    );
    for counter in [
        Counter::TickPasses,
        Counter::TickNoLeader,
        Counter::TickTruncated,
        Counter::TickRingFull,
        Counter::TickCopies,
        Counter::TickCopiesWanted,
        Counter::TickCopiesTorn,
    ] {
        println!("{counter:?} {}", counters.get(counter));
    }
    if let Some(look) = first_look {
        println!("first look: {:?}", look.look);
    }
    Ok(())
}
