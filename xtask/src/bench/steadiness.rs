//! How steady this machine's CPUs are: a spin loop pinned to each bench CPU counts its
//! iterations in short slices. On a shared virtual machine the host's other tenants change
//! how fast a vCPU runs from one second to the next, and none of it shows as steal time;
//! a tool's cost smaller than this spread, alone against alone, is not resolved by a few
//! rounds. The bench writes it above its tables so that every figure is read against it.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

const SLICES: usize = 20;
const SLICE: Duration = Duration::from_millis(500);

/// The spread of one CPU's speed over `SLICES` slices.
pub struct Steadiness {
    cpu: usize,
    /// Coefficient of variation of the slices' iteration counts.
    variation: f64,
    /// The slowest and fastest slice against the median slice.
    slowest: f64,
    fastest: f64,
}

impl Steadiness {
    /// Spins on `cpu` (the calling thread is pinned there, then given back its CPUs).
    pub fn measure(cpu: usize) -> std::io::Result<Self> {
        let previous = affinity()?;
        set_affinity(&cpu_set(&[cpu]))?;
        let mut counts: Vec<f64> = (0..SLICES).map(|_| spin_for(SLICE)).collect();
        set_affinity(&previous)?;
        counts.sort_by(f64::total_cmp);
        let mean = counts.iter().sum::<f64>() / counts.len() as f64;
        let variance = counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / counts.len() as f64;
        let median = counts[counts.len() / 2];
        Ok(Self {
            cpu,
            variation: variance.sqrt() / mean,
            slowest: counts[0] / median - 1.0,
            fastest: counts[counts.len() - 1] / median - 1.0,
        })
    }

    pub fn text(&self) -> String {
        format!(
            "CPU {} varied {:.1}% (coefficient of variation), its slices from {:+.0}% to {:+.0}% of their median",
            self.cpu,
            self.variation * 100.0,
            self.slowest * 100.0,
            self.fastest * 100.0
        )
    }
}

/// Iterations of a fixed loop body in `slice`.
fn spin_for(slice: Duration) -> f64 {
    let start = Instant::now();
    let mut iterations = 0u64;
    let mut sum = 0u64;
    while start.elapsed() < slice {
        for i in 0..1_000u64 {
            sum = black_box(sum.wrapping_add(i));
        }
        iterations += 1;
    }
    black_box(sum);
    iterations as f64
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bitmask; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `set` is a valid cpu_set_t; CPU_SET indexes its mask (and panics past
        // its 1,024 CPUs), writing nothing else.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

fn affinity() -> std::io::Result<libc::cpu_set_t> {
    let mut set = cpu_set(&[]);
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into `set`.
    let result =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(set)
}

fn set_affinity(set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; the kernel only reads it.
    let result = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
