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
        summary::{elide_function, format_duration, recording_scope_brief},
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
        WaitKind::Task => (0x30, 0x69, 0x98),      // Python blue
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

/// The height the time chart adds above the frames.
const CHART_HEIGHT: usize = 120;
/// Where it starts: under the title and subtitle.
const CHART_TOP: usize = 58;
/// Call sites charted, heaviest first (the rest are summed in the title's count).
const CHART_SITES: usize = 4;
const CHART_COLORS: [&str; CHART_SITES] = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e"];

/// A recording's threads blocked at each call site second by second, as lines above the
/// frames, so that "when did it start?" is answered at a glance. The drawing grows by
/// `CHART_HEIGHT`; the frames and the texts under them move down by as much.
fn with_time_chart(svg: Vec<u8>, profile: &Profile) -> Vec<u8> {
    let Some(timeline) = &profile.timeline else { return svg };
    let seconds = timeline.seconds.iter().map(|site| site.threads.len()).max().unwrap_or(0);
    if seconds < 2 {
        return svg; // one point is no line
    }
    let text = String::from_utf8_lossy(&svg).into_owned();
    let (Some(height), Some(frames)) = (root_height(&text), text.find("<svg id=\"frames\"")) else {
        return svg;
    };
    let Some(frames_end) =
        text.rfind("</svg>").and_then(|root_end| text[..root_end].rfind("</svg>"))
    else {
        return svg;
    };
    let grown = height + CHART_HEIGHT;
    let mut text = format!(
        "{}{}<g transform=\"translate(0,{CHART_HEIGHT})\">{}</svg></g>{}",
        &text[..frames],
        chart(profile, timeline, seconds),
        &text[frames..frames_end],
        &text[frames_end + "</svg>".len()..],
    );
    text = text
        .replacen(&format!("height=\"{height}\""), &format!("height=\"{grown}\""), 2)
        .replacen(&format!(" {height}\""), &format!(" {grown}\""), 1);
    for id in ["details", "matched"] {
        text = move_down(&text, id, CHART_HEIGHT);
    }
    text.into_bytes()
}

/// A legend entry's characters (17% of inferno's 1,200 pixels in 11-pixel monospace), and
/// the fewest its call site is cut to for whose it is.
const LEGEND_CHARS: usize = 28;
const LEGEND_SITE_CHARS: usize = 12;

/// A line of the chart: a call site's threads blocked at each second's end.
struct ChartedSite {
    site: String,
    /// ` (c-forked 4242)`, ` (postgres ×31)` in a profile of several processes.
    whose: String,
    threads: Vec<u32>,
    blocked_ns: u64,
}

/// The heaviest `CHART_SITES` call sites, each one program's over all its processes (a
/// server forked per connection has a line per process otherwise, one thread each, and
/// four of them filled the legend).
fn charted_sites(timeline: &crate::model::Timeline) -> Vec<ChartedSite> {
    type Key<'a> = (&'a str, tracer_common::WaitKind, Option<&'a str>);
    let mut merged: Vec<(Key, ChartedSite, std::collections::BTreeSet<u32>)> = Vec::new();
    for site in &timeline.seconds {
        let key: Key = (&site.site, site.kind, site.process.as_ref().map(|p| p.comm.as_str()));
        let blocked_ns = site.blocked_ns.iter().sum::<u64>();
        let pid = site.process.as_ref().map(|process| process.pid);
        match merged.iter_mut().find(|(same, ..)| *same == key) {
            Some((_, charted, pids)) => {
                if charted.threads.len() < site.threads.len() {
                    charted.threads.resize(site.threads.len(), 0);
                }
                for (sum, threads) in charted.threads.iter_mut().zip(&site.threads) {
                    *sum += threads;
                }
                charted.blocked_ns += blocked_ns;
                pids.extend(pid);
            }
            None => merged.push((
                key,
                ChartedSite {
                    site: site.site.clone(),
                    whose: String::new(),
                    threads: site.threads.clone(),
                    blocked_ns,
                },
                pid.into_iter().collect(),
            )),
        }
    }
    merged.sort_by_key(|(_, charted, _)| std::cmp::Reverse(charted.blocked_ns));
    merged.truncate(CHART_SITES);
    merged
        .into_iter()
        .map(|((_, _, comm), mut charted, pids)| {
            charted.whose = match (comm, pids.len()) {
                (None, _) => String::new(),
                (Some(comm), 1) => format!(" ({comm} {})", pids.first().expect("one")),
                (Some(comm), processes) => format!(" ({comm} ×{processes})"),
            };
            charted
        })
        .collect()
}

/// The chart: a line per heaviest call site (threads blocked at the end of each second),
/// its legend, and the axes' extremes. x is in percent, as inferno's fluid frames are.
fn chart(profile: &Profile, timeline: &crate::model::Timeline, seconds: usize) -> String {
    let sites = charted_sites(timeline);
    let most = sites.iter().flat_map(|site| site.threads.iter().copied()).max().unwrap_or(0).max(1);
    let plot_top = CHART_TOP + 18;
    let plot_height = CHART_HEIGHT - 36;
    let mut chart = format!(
        "<g id=\"timechart\"><text x=\"10\" y=\"{}\">{} blocked at each second's end, by call \
         site</text>",
        CHART_TOP + 10,
        profile.waiters(),
    );
    chart.push_str(&format!(
        "<rect x=\"1%\" y=\"{plot_top}\" width=\"98%\" height=\"{plot_height}\" fill=\"white\" \
         fill-opacity=\"0.6\" stroke=\"#999\" stroke-width=\"0.5\"/>"
    ));
    // x in milliseconds from the start: each count is at its second's end (the last at
    // the recording's end, its second a partial one).
    let end_ms = (profile.duration.as_millis() as usize).max(1);
    chart.push_str(&format!(
        "<svg x=\"1%\" y=\"{plot_top}\" width=\"98%\" height=\"{plot_height}\" viewBox=\"0 0 \
         {end_ms} {most}\" preserveAspectRatio=\"none\">"
    ));
    for (site, color) in sites.iter().zip(CHART_COLORS) {
        let points: Vec<String> = (0..seconds)
            .map(|second| {
                let threads = site.threads.get(second).copied().unwrap_or(0);
                format!("{},{}", ((second + 1) * 1000).min(end_ms), most - threads)
            })
            .collect();
        chart.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" \
             vector-effect=\"non-scaling-stroke\"/>",
            points.join(" ")
        ));
    }
    chart.push_str("</svg>");
    let bottom = plot_top + plot_height;
    chart.push_str(&format!(
        "<text x=\"1%\" y=\"{}\" font-size=\"10\">0 s</text><text x=\"99%\" y=\"{}\" \
         font-size=\"10\" text-anchor=\"end\">{}</text><text x=\"0.2%\" y=\"{}\" \
         font-size=\"10\">{most}</text>",
        bottom + 11,
        bottom + 11,
        format_duration(profile.duration.as_nanos() as u64),
        plot_top + 9,
    ));
    // The legend, right of the heading: four entries of 17% (204 of inferno's 1200
    // pixels: 28 characters of 11-pixel monospace, `report_stat (pypileup.py:22)`).
    let mut x = 32.0;
    for (site, color) in sites.iter().zip(CHART_COLORS) {
        // The process named it: no control characters in the XML. Whose, kept whole
        // where it fits: the site gives way first.
        let (site_name, whose) =
            (crate::report::escape_name(&site.site), crate::report::escape_name(&site.whose));
        let room = LEGEND_CHARS.saturating_sub(whose.chars().count()).max(LEGEND_SITE_CHARS);
        let name = xml_escape(&elide(
            &format!("{}{whose}", elide_function(&site_name, room)),
            LEGEND_CHARS,
        ));
        chart.push_str(&format!(
            "<rect x=\"{x:.1}%\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text \
             x=\"{:.1}%\" y=\"{}\" font-size=\"11\">{name}</text>",
            CHART_TOP + 1,
            x + 1.0,
            CHART_TOP + 10,
        ));
        x += 17.0;
    }
    chart.push_str("</g>");
    chart
}

/// `text` cut to `max` characters, with an ellipsis.
fn elide(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Moves the element `id="..."`'s `y` down by `by`.
fn move_down(svg: &str, id: &str, by: usize) -> String {
    let marker = format!("id=\"{id}\"");
    let Some(at) = svg.find(&marker) else { return svg.to_string() };
    let Some(y_at) = svg[at..].find(" y=\"").map(|offset| at + offset + " y=\"".len()) else {
        return svg.to_string();
    };
    let Some(y_end) = svg[y_at..].find('"').map(|offset| y_at + offset) else {
        return svg.to_string();
    };
    let Ok(y) = svg[y_at..y_end].parse::<f64>() else { return svg.to_string() };
    format!("{}{:.2}{}", &svg[..y_at], y + by as f64, &svg[y_end..])
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
        // Keyed by the frame as the folded lines write it (a `;` in a Go type made `:`).
        palette.insert(super::folded::sanitize(&kind_frame(profile, stack)), color);
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
    // A profile holds threads' syscall waits, goroutines, or (of several processes) both:
    // the legend names the kinds of what it holds, and asyncio tasks where a Python
    // process has them.
    let goroutines = profile.waiters() != "threads";
    let threads = profile.waiters() != "goroutines";
    let has_tasks = profile.stacks.iter().any(|stack| stack.kind == WaitKind::Task);
    let mut legend: Vec<(&str, Color)> = WaitKind::ALL
        .iter()
        .filter(|&&kind| match kind {
            WaitKind::Goroutine => goroutines,
            WaitKind::Task => has_tasks,
            _ => threads,
        })
        .map(|&kind| (kind.name(), kind_color(kind)))
        .collect();
    if recording {
        legend.push(("still blocked", STILL_BLOCKED));
    }
    // The chart of time is the plain flamegraph's (the chains' towers are not in time).
    let svg = if title_end.is_empty() { with_time_chart(svg, profile) } else { svg };
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
    // The notes are an XML comment, where `--` may not appear nor a `-` come last: the
    // name's hyphens are written as U+2010, which reads the same.
    let comm = super::escape_name(comm).replace('-', "\u{2010}");
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
        ProfileKind::Recording => recording_scope_brief(profile),
        ProfileKind::Snapshot => "snapshot".to_string(),
    };
    // The title names several processes; their pids are the roots' frames.
    let pid = match profile.processes.is_empty() {
        true => format!("pid {}, ", profile.pid),
        false => String::new(),
    };
    format!(
        "{pid}{what}{}; width = {width}; top frame = wait kind{}",
        if profile.target_exited { "; the process exited during the recording" } else { "" },
        backed_up_note(profile),
    )
}

/// The heaviest backed-up socket and how many more, which no frame shows (an
/// event-driven server's client that stopped reading); empty when none is.
fn backed_up_note(profile: &Profile) -> String {
    let backed_up = &profile.backed_up;
    let Some(heaviest) = backed_up.sockets.first() else { return String::new() };
    let more = backed_up.count() - 1;
    let queued =
        heaviest.queued().map_or(String::new(), |bytes| super::summary::format_bytes(bytes) + " ");
    format!(
        "; backed up: {} {} {queued}({}){}",
        heaviest.peer,
        heaviest.backlog.name(),
        heaviest.brief_reason(),
        if more > 0 { format!(" and {more} more") } else { String::new() },
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

    #[test]
    fn a_site_is_one_line_over_the_processes_of_one_program() {
        use crate::model::{ProcessTag, Timeline, timeline::SiteSeconds};

        let site = |name: &str, pid, comm: &str, threads: Vec<u32>| SiteSeconds {
            site: name.to_string(),
            kind: WaitKind::Futex,
            process: Some(ProcessTag { pid, comm: comm.to_string(), cgroup: None }),
            blocked_ns: threads.iter().map(|&t| u64::from(t) * 1_000_000_000).collect(),
            threads,
        };
        let timeline = Timeline {
            seconds: vec![
                site("ProcSleep", 10, "postgres", vec![1, 1, 1]),
                site("ProcSleep", 11, "postgres", vec![0, 1]),
                site("ProcSleep", 12, "other", vec![1, 1, 1]),
                site("secure_read", 13, "postgres", vec![1]),
            ],
            ..Timeline::default()
        };
        let sites = charted_sites(&timeline);
        let line = |whose: &str| sites.iter().find(|site| site.whose == whose);
        let backends = line(" (postgres ×2)").expect("one line for both backends");
        assert_eq!((backends.site.as_str(), &backends.threads[..]), ("ProcSleep", &[1, 2, 1][..]));
        assert_eq!(sites[0].whose, " (postgres ×2)", "heaviest first");
        assert!(line(" (other 12)").is_some() && line(" (postgres 13)").is_some());
        assert_eq!(sites.len(), 3);
    }
}
