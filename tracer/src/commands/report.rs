//! `tracer report`: re-renders a profile tracer saved (JSON, or its own pprof) in any
//! format, or compares it with a baseline. Needs no privileges and no live process.

use std::fmt::Write as _;

use anyhow::bail;

use crate::{
    cli::ReportArgs,
    model::ProfileKind,
    report::{
        Format, Output, RenderOptions, Weight, diff, escape_controls, flamegraph, note_written,
        outputs_failed, print_stdout, read_saved, summary::render_summary_in,
    },
};

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    let ReportArgs { input, diff: base, outputs, weight, format, top } = args;
    // Formats first, then the inputs, then the files: a bad input leaves no empty report.
    let formats = outputs
        .iter()
        .map(|path| format.map_or_else(|| Format::from_path(path), Ok))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((path, _)) = outputs.iter().zip(&formats).find(|(_, f)| **f == Format::TraceJson) {
        bail!(
            "{}: a saved profile keeps no wait's own start and end: `tracer record --output \
             FILE.trace.json` writes the timeline as it records",
            path.display()
        );
    }
    if base.is_some()
        && let Some((path, _)) = outputs
            .iter()
            .zip(&formats)
            .find(|(_, format)| !matches!(format, Format::Svg | Format::Folded | Format::Text))
    {
        bail!("{}: a diff is written as .svg, .folded or .txt", path.display());
    }
    let saved = read_saved(&input)?;
    let weight = weight.unwrap_or_else(|| Weight::default_for(saved.profile.kind));
    let outputs = outputs
        .iter()
        .zip(formats)
        .map(|(path, format)| Output::create_as(path, format))
        .collect::<Result<Vec<_>, _>>()?;

    match base {
        // The files first, stdout last: a stdout that is gone must not cost them.
        None => {
            let failed = outputs
                .iter()
                .filter(|output| {
                    let options = RenderOptions { weight, top };
                    let written = output.write_with(&saved.profile, &saved.provenance, options);
                    note_written(&output.path, written)
                })
                .count();
            let columns = crate::report::stdout_columns();
            print_stdout(&render_summary_in(&saved.profile, top, columns))?;
            if !saved.left_out.is_empty() {
                crate::report::note(&format!(
                    "tracer: {} is pprof, which has no place for {} (the .json tracer \
                     writes keeps them)",
                    crate::report::escape_name(&input.to_string_lossy()),
                    spoken_list(&saved.left_out)
                ));
            }
            outputs_failed(failed, outputs.len())?;
        }
        Some(base_path) => {
            let base = read_saved(&base_path)?;
            let (before, after) = (&base.profile, &saved.profile);
            // A snapshot's ages of waits going on are no recording's blocked time.
            if before.kind != after.kind {
                let name = |kind| match kind {
                    ProfileKind::Recording => "recording",
                    ProfileKind::Snapshot => "snapshot",
                };
                bail!(
                    "{} is a {} and {} a {}: a diff compares two of a kind",
                    base_path.display(),
                    name(before.kind),
                    input.display(),
                    name(after.kind)
                );
            }
            let changes = diff::site_changes(before, after);
            let mut table = diff::render_changes(
                &base_path.display().to_string(),
                &input.display().to_string(),
                &changes,
                top,
            );
            if let Some(note) = diff::durations_note(before, after) {
                table.push_str(&note);
            }
            table.push_str(&diff::backed_up_changes(before, after));
            table.push_str(&diff::mismatch_notes(before, after));
            // Escaped once for stdout and the .txt alike: it quotes the targets' names.
            let table = escape_controls(&table).into_owned();
            let lines = diff::differential_lines(before, after, weight);
            let mut failed = 0;
            for output in &outputs {
                let bytes = match output.format {
                    Format::Svg => {
                        let mut svg = Vec::new();
                        let title = format!(
                            "{}: {} against {}",
                            after.comm,
                            input.display(),
                            base_path.display()
                        );
                        let mut subtitle = format!(
                            "width = {} in {}; red: more than in the baseline, blue: less",
                            weight.unit(),
                            input.display()
                        );
                        if let Some(scale) = diff::baseline_scale(before, after)
                            && weight != Weight::Threads
                        {
                            let _ = write!(subtitle, " (baseline ×{scale:.2}, to this length)");
                        }
                        flamegraph::write_differential(
                            &title, &subtitle, weight, &lines, &mut svg,
                        )?;
                        svg
                    }
                    Format::Folded => lines
                        .iter()
                        .map(|line| format!("{line}\n"))
                        .collect::<String>()
                        .into_bytes(),
                    _ => table.clone().into_bytes(),
                };
                failed += usize::from(note_written(&output.path, output.write_bytes(&bytes)));
            }
            print_stdout(&table)?;
            outputs_failed(failed, outputs.len())?;
        }
    }
    Ok(())
}

/// `a`, `a and b`, `a, b and c`.
fn spoken_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [only] => only.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}
