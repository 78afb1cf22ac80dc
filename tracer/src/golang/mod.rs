//! Go programs: goroutines, seen from outside. A Go program's goroutines park in the Go
//! scheduler, not in the kernel, so its threads' waits say nothing about them; this module
//! reads the runtime's own goroutine list instead.
//!
//! Stages: `binary` (is it Go; version, `runtime.g` layout, `runtime.allgs`, wait-reason
//! names) → `goroutines` (read the list and unwind each waiting goroutine from
//! /proc/PID's memory, without stopping the process) → `pclntab` (names, files, lines from
//! `.gopclntab`, which stripped binaries keep) → `report` (pprof-like table, folded, svg).

mod binary;
mod goroutines;
mod pclntab;
mod record;
mod report;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;

use crate::{stacks::ProcessImage, target::Target};

pub use binary::is_go;
pub use record::record;

/// Snapshots the goroutines of the Go process `target`, whose main executable is a module
/// of `image`, and prints/writes the reports.
pub fn snapshot(
    target: &Target,
    image: &ProcessImage,
    outputs: &[PathBuf],
    top: usize,
) -> anyhow::Result<()> {
    let pid = target.pid;
    let formats = outputs
        .iter()
        .map(|path| report::GoFormat::from_path(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let module = image
        .modules()
        .iter()
        .find(|module| module.is_main_executable)
        .context("no main executable mapping")?;
    let binary = binary::GoBinary::parse(module.file_bytes())
        .with_context(|| format!("{}: cannot read the Go runtime's tables", module.name()))?;
    log::info!(
        "{}: {}, runtime.g layout from {:?}, allgs at {:#x}, {} wait reasons, {}",
        module.name(),
        binary.version,
        binary.layout_source,
        binary.allgs,
        binary.wait_reasons.len(),
        if binary.stripped {
            "stripped"
        } else {
            "with symbols"
        }
    );
    let addresses = goroutines::RuntimeAddresses {
        allgs: binary.allgs.wrapping_add(module.bias),
        goexit: binary.goexit.start.wrapping_add(module.bias)
            ..binary.goexit.end.wrapping_add(module.bias),
    };
    let parsed = started.elapsed();
    let (goroutines, counts) = goroutines::read_goroutines(pid, &binary.layout, &addresses)
        .map_err(|err| {
            if target.has_exited() {
                anyhow::anyhow!("pid {pid} exited during the snapshot")
            } else {
                anyhow::Error::new(err).context(format!("cannot read the goroutines of pid {pid}"))
            }
        })?;
    let read = started.elapsed();
    let snapshot = report::GoSnapshot::build(&binary, module.bias, goroutines, counts);
    let elapsed = started.elapsed();
    log::info!(
        "goroutine snapshot of pid {pid}: binary {parsed:?}, memory {:?}, grouping {:?}, total {elapsed:?}",
        read - parsed,
        elapsed - read
    );
    print!(
        "{}",
        snapshot.render_text(&target.comm, pid, &binary.version, top, elapsed)
    );
    // The .txt report holds every group, not just the top ones.
    let full_text = snapshot.render_text(&target.comm, pid, &binary.version, 0, elapsed);
    for (path, format) in outputs.iter().zip(formats) {
        snapshot
            .write(path, format, &target.comm, &full_text)
            .with_context(|| format!("{}: cannot write the report", path.display()))?;
        eprintln!("tracer: wrote {}", path.display());
    }
    Ok(())
}
