//! The Go probes: uprobes at `runtime.gopark` and `runtime.execute` of one executable,
//! and the maps they fill (goroutine waits summed by stack and reason, parks in progress).

use std::path::Path;

use aya::{Btf, EbpfLoader};

use tracer_common::{GO_COUNTER_COUNT, GoCounter, GoPark, GoWaitKey, GoWaitTotals};

use super::{ProbeError, Probes, SMALLEST_RING_BYTES, map_error};

/// Goroutine waits with one (stack, caller, wait reason), summed over CPUs.
#[derive(Clone, Debug)]
pub struct GoWaitTotal {
    /// The goroutine's stack at `runtime.gopark`'s entry, leaf (gopark itself) first;
    /// empty when the stack map could not store it.
    pub pcs: Vec<u64>,
    /// gopark's return address, which the frame-pointer walk from its entry skips.
    pub caller: u64,
    /// `runtime.waitReason`.
    pub reason: u8,
    pub count: u64,
    pub total_ns: u64,
}

/// The Go probes' counters (the kernel side's GO_COUNTERS), summed over CPUs, indexed
/// by `GoCounter`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GoProbeCounters(pub [u64; GO_COUNTER_COUNT]);

impl GoProbeCounters {
    pub fn get(&self, counter: GoCounter) -> u64 {
        self.0[counter as usize]
    }
}

impl Probes {
    /// Loads the object for goroutine waits of the Go process `tgid`, whose `runtime.g`
    /// has its `goid` at `goid_offset`.
    pub fn open_go(tgid: u32, goid_offset: u64, btf_path: &Path) -> Result<Self, ProbeError> {
        let btf = Btf::parse_file(btf_path, aya::Endianness::default())
            .map_err(|source| ProbeError::Btf { path: btf_path.display().to_string(), source })?;
        let mut loader = EbpfLoader::new();
        loader.allow_unsupported_maps();
        // Only the uprobes run: the thread passes' ring is not used.
        loader.map_max_entries("PASSES", SMALLEST_RING_BYTES);
        let ebpf = loader
            .btf(Some(&btf))
            .override_global("TARGET_TGID", &tgid, true)
            .override_global("GO_GOID_OFFSET", &goid_offset, true)
            .load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer")))
            .map_err(ProbeError::Load)?;
        let process_links = Default::default();
        Ok(Self {
            ebpf,
            btf,
            tgid,
            wakers: false,
            queued_wakes: false,
            process_links,
            pass_bytes: Vec::new(),
            pass_processes: Vec::new(),
            thread_list: false,
        })
    }

    /// Attaches the goroutine park/run uprobes to `executable` at the file offsets of
    /// `runtime.gopark` and `runtime.execute`. Every process running that file fires them;
    /// the programs keep the target's (a per-process perf event would see one thread only).
    pub fn attach_go_probes(
        &mut self,
        executable: &Path,
        gopark_offset: u64,
        execute_offset: u64,
    ) -> Result<(), ProbeError> {
        use aya::programs::{
            UProbe,
            uprobe::{UProbeAttachLocation, UProbeScope},
        };
        // The run probe first, so no park noted is left without its end.
        for (name, offset) in [("tracer_go_run", execute_offset), ("tracer_go_park", gopark_offset)]
        {
            let attach_err = |source| ProbeError::Program { name, source };
            let program: &mut UProbe = self
                .ebpf
                .program_mut(name)
                .ok_or(ProbeError::MissingProgram { name })?
                .try_into()
                .map_err(attach_err)?;
            program.load().map_err(attach_err)?;
            program
                .attach(
                    UProbeAttachLocation::AbsoluteOffset(offset),
                    executable,
                    UProbeScope::AllProcesses,
                )
                .map_err(attach_err)?;
        }
        Ok(())
    }

    /// The ended goroutine waits, by stack, caller and wait reason, with their stacks.
    pub fn go_waits(&self) -> Result<Vec<GoWaitTotal>, ProbeError> {
        use aya::maps::{PerCpuHashMap, StackTraceMap};
        let waits: PerCpuHashMap<_, GoWaitKey, GoWaitTotals> =
            PerCpuHashMap::try_from(self.map("GO_WAITS")?).map_err(map_error("GO_WAITS"))?;
        let stacks =
            StackTraceMap::try_from(self.map("GO_STACKS")?).map_err(map_error("GO_STACKS"))?;
        let mut totals = Vec::new();
        for entry in waits.iter() {
            let (key, per_cpu) = entry.map_err(map_error("GO_WAITS"))?;
            let pcs = if key.stack_id == GoPark::NO_STACK {
                Vec::new()
            } else {
                stacks
                    .get(&key.stack_id, 0)
                    .map(|trace| trace.frames().iter().map(|frame| frame.ip).collect())
                    .unwrap_or_default()
            };
            totals.push(GoWaitTotal {
                pcs,
                caller: key.caller,
                reason: key.reason as u8,
                count: per_cpu.iter().map(|value| value.count).sum(),
                total_ns: per_cpu.iter().map(|value| value.total_ns).sum(),
            });
        }
        Ok(totals)
    }

    /// The goroutines parked now that the probes saw park: goid → when it parked (ns,
    /// CLOCK_MONOTONIC, the clock of the runtime's `nanotime`).
    pub fn go_parked(&self) -> Result<std::collections::HashMap<u64, u64>, ProbeError> {
        let parked: aya::maps::HashMap<_, u64, GoPark> =
            aya::maps::HashMap::try_from(self.map("GO_PARKED")?).map_err(map_error("GO_PARKED"))?;
        // An entry removed while iterating is skipped, not an error worth the report.
        Ok(parked.iter().filter_map(Result::ok).map(|(goid, park)| (goid, park.start_ns)).collect())
    }

    pub fn go_counters(&self) -> Result<GoProbeCounters, ProbeError> {
        // Indexed by GoCounter, in order (tracer-common asserts it).
        let mut counters = GoProbeCounters::default();
        self.sum_counters("GO_COUNTERS", &mut counters.0)?;
        Ok(counters)
    }
}
