//! An interactive SVG flamegraph, drawn by inferno from the folded lines: the
//! wait-kind frames coloured by kind (a legend under the graph says which is which),
//! code frames in inferno's warm palette, inferno's search and zoom.

use std::io::Write;

use inferno::flamegraph::{
    self, Options,
    color::{Color, PaletteMap},
};
use tracer_common::WaitKind;

use crate::{
    model::{Profile, ProfileKind},
    report::{
        Weight,
        folded::{chain_folded_lines, folded_lines_weighted, kind_frame},
        summary::recording_scope,
    },
};

/// The colour of each wait kind's frames; in a recording, waits that never ended are
/// `STILL_BLOCKED` whatever their kind.
fn kind_color(kind: WaitKind) -> Color {
    let (r, g, b) = match kind {
        WaitKind::Futex => (0x8e, 0x6b, 0xd6),     // violet
        WaitKind::Send => (0x3b, 0x82, 0xd6),      // blue
        WaitKind::Recv => (0x2a, 0xb3, 0xc0),      // cyan
        WaitKind::Connect => (0x4c, 0xaf, 0x50),   // green
        WaitKind::Accept => (0x9e, 0xb8, 0x3b),    // olive
        WaitKind::Poll => (0x9e, 0x9e, 0x9e),      // grey
        WaitKind::Read => (0x5c, 0x9d, 0xb0),      // steel
        WaitKind::Write => (0x6d, 0x7f, 0xc4),     // slate
        WaitKind::Goroutine => (0x00, 0x96, 0x88), // teal
    };
    Color { r, g, b }
}

const STILL_BLOCKED: Color = Color { r: 0xe0, g: 0x3a, b: 0x9a }; // magenta

/// The legend's height below inferno's drawing: one row of swatches.
const LEGEND_HEIGHT: usize = 24;
const LEGEND_SWATCH: usize = 12;
/// Horizontal room per legend entry (swatch and name).
const LEGEND_ENTRY_WIDTH: usize = 110;

pub fn write_flamegraph(
    profile: &Profile,
    weight: Weight,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let lines = folded_lines_weighted(profile, weight);
    draw(profile, weight, &lines, "", out)
}

/// The flamegraph with each wait chain as one tower (see `chain_folded_lines`): the
/// pile-up's stacks, and above them what held them up.
pub fn write_chains_flamegraph(
    profile: &Profile,
    weight: Weight,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let lines = chain_folded_lines(profile, weight);
    draw(profile, weight, &lines, ", with what held them up", out)
}

fn draw(
    profile: &Profile,
    weight: Weight,
    lines: &[String],
    title_end: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut palette = PaletteMap::default();
    let recording = profile.kind == ProfileKind::Recording;
    for stack in &profile.stacks {
        let still_blocked = recording && stack.in_progress;
        let color = if still_blocked { STILL_BLOCKED } else { kind_color(stack.kind) };
        palette.insert(kind_frame(profile, stack), color);
    }
    // The comm comes from the process: no control characters in the XML.
    let comm = crate::report::escape_name(&profile.comm);
    let mut options = base_options(&comm, weight);
    options.palette_map = Some(&mut palette);
    options.title = match profile.kind {
        ProfileKind::Recording => format!("{comm}: where {} blocked{title_end}", profile.waiters()),
        ProfileKind::Snapshot => format!("{comm}: {} blocked now{title_end}", profile.waiters()),
    };
    options.subtitle = Some(subtitle(profile, weight));
    let mut svg = Vec::new();
    if lines.is_empty() {
        // inferno refuses an empty profile; draw one frame that says so.
        let empty = [format!("{comm} (no waits over the threshold) 1")];
        flamegraph::from_lines(&mut options, empty.iter().map(String::as_str), &mut svg)?;
    } else {
        flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)?;
    }
    // A profile holds either threads' syscall waits or goroutines: the legend names
    // the kinds of the one it holds.
    let goroutines = profile.waiters() == "goroutines";
    let mut legend: Vec<(&str, Color)> = WaitKind::ALL
        .iter()
        .filter(|&&kind| (kind == WaitKind::Goroutine) == goroutines)
        .map(|&kind| (kind.name(), kind_color(kind)))
        .collect();
    if recording {
        legend.push(("still blocked", STILL_BLOCKED));
    }
    out.write_all(&with_legend(&svg, &legend))?;
    Ok(())
}

/// inferno's options as tracer uses them: colours by name hash, so the same file
/// renders the same SVG (golden tests, diffs of reports).
fn base_options(comm: &str, weight: Weight) -> Options<'static> {
    let mut options = Options::default();
    options.hash = true;
    options.count_name = weight.unit().to_string();
    options.name_type = "Frame:".to_string();
    options.notes = format!("tracer {} profile of {comm}", super::TRACER_VERSION);
    options
}

fn subtitle(profile: &Profile, weight: Weight) -> String {
    let width = match weight {
        Weight::Time if profile.kind == ProfileKind::Snapshot => "time blocked so far",
        Weight::Time => "blocked time",
        Weight::Count if profile.kind == ProfileKind::Snapshot => profile.waiters(),
        Weight::Count => "waits",
        Weight::Threads => profile.waiters(),
    };
    let what = match profile.kind {
        ProfileKind::Recording => recording_scope(profile),
        ProfileKind::Snapshot => "snapshot".to_string(),
    };
    format!(
        "pid {}, {what}{}; width = {width}; top frame = wait kind",
        profile.pid,
        if profile.target_exited { "; the process exited during the recording" } else { "" },
    )
}

/// Adds a row of coloured swatches under inferno's drawing: the SVG grows by
/// `LEGEND_HEIGHT` (its height, view box and background) and the legend goes last.
fn with_legend(svg: &[u8], entries: &[(&str, Color)]) -> Vec<u8> {
    let text = String::from_utf8_lossy(svg);
    let Some(height) = root_height(&text) else {
        return svg.to_vec(); // not inferno's usual header: leave it without a legend
    };
    let grown = height + LEGEND_HEIGHT;
    let text = text
        .replacen(&format!("height=\"{height}\""), &format!("height=\"{grown}\""), 2)
        .replacen(&format!(" {height}\""), &format!(" {grown}\""), 1);
    let mut legend = String::from("<g id=\"legend\">");
    for (index, (name, color)) in entries.iter().enumerate() {
        let x = 10 + index * LEGEND_ENTRY_WIDTH;
        let y = height + (LEGEND_HEIGHT - LEGEND_SWATCH) / 2;
        legend.push_str(&format!(
            "<rect x=\"{x}\" y=\"{y}\" width=\"{LEGEND_SWATCH}\" height=\"{LEGEND_SWATCH}\" \
             fill=\"rgb({},{},{})\"/><text x=\"{}\" y=\"{}\">{name}</text>",
            color.r,
            color.g,
            color.b,
            x + LEGEND_SWATCH + 4,
            y + LEGEND_SWATCH - 2,
        ));
    }
    legend.push_str("</g>\n</svg>");
    match text.rfind("</svg>") {
        Some(end) => {
            format!("{}{legend}{}", &text[..end], &text[end + "</svg>".len()..]).into_bytes()
        }
        None => svg.to_vec(),
    }
}

/// The `height` of the root `<svg>` element.
fn root_height(svg: &str) -> Option<usize> {
    let root = &svg[svg.find("<svg ")?..];
    let value = &root[root.find("height=\"")? + "height=\"".len()..];
    value[..value.find('"')?].parse().ok()
}

/// A differential flamegraph: `lines` are inferno's differential folded lines
/// (`stack before after`); frames are red where the after profile has more, blue
/// where it has less.
pub fn write_differential(
    title: &str,
    subtitle: &str,
    weight: Weight,
    lines: &[String],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut options = base_options("diff", weight);
    options.title = crate::report::escape_name(title).into_owned();
    options.subtitle = Some(crate::report::escape_name(subtitle).into_owned());
    if lines.is_empty() {
        let empty = ["(no waits in either profile) 1 1"];
        flamegraph::from_lines(&mut options, empty.iter().copied(), out)?;
    } else {
        flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legend_grows_the_drawing_and_closes_it() {
        let svg = br#"<?xml version="1.0"?><svg version="1.1" width="1200" height="150" viewBox="0 0 1200 150"><rect x="0" y="0" width="100%" height="150" fill="url(#background)"/></svg>"#;
        let out =
            String::from_utf8(with_legend(svg, &[("futex", kind_color(WaitKind::Futex))])).unwrap();
        assert!(out.contains(r#"width="1200" height="174" viewBox="0 0 1200 174""#), "{out}");
        assert!(out.contains(r#"height="174" fill="url(#background)""#), "{out}");
        assert!(
            out.ends_with(
                r#"<text x="26" y="166">futex</text></g>
</svg>"#
            ),
            "{out}"
        );
    }
}
