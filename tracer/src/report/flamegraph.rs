//! An interactive SVG flamegraph of the blocked time, drawn by inferno from the folded lines.

use std::io::Write;

use inferno::flamegraph::{self, Options};

use crate::{aggregate::Profile, report::folded::folded_lines, report::summary::format_duration};

pub fn write_flamegraph(profile: &Profile, out: &mut impl Write) -> anyhow::Result<()> {
    let lines = folded_lines(profile);
    let mut options = Options::default();
    options.title = format!(
        "{} (pid {}): where threads blocked, {} recorded",
        profile.comm,
        profile.pid,
        format_duration(profile.duration.as_nanos() as u64)
    );
    options.subtitle = Some(format!(
        "width = blocked time (waits >= {}); top frame = wait kind{}",
        format_duration(profile.min_wait.as_nanos() as u64),
        if profile.target_exited { "; the process exited during the recording" } else { "" }
    ));
    options.count_name = "us blocked".to_string();
    options.name_type = "Function:".to_string();
    if lines.is_empty() {
        // inferno refuses an empty profile; draw one frame that says so.
        let empty = [format!("{} (no waits over the threshold) 1", profile.comm)];
        flamegraph::from_lines(&mut options, empty.iter().map(String::as_str), out)?;
    } else {
        flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)?;
    }
    Ok(())
}
