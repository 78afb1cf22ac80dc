//! `tracer`: which call sites of a live process pile up waiting. A thin shell over the
//! library: parse the command line, start the async runtime, run the command, print an
//! error as one line.

use std::process::ExitCode;

use clap::Parser as _;

use tracer::{
    cli::{Cli, Command},
    commands::{record, report, snapshot},
    serve,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        // Messages can quote the target's names (serve logs its comm): no escape
        // sequences on the terminal.
        .format(|buf, record| {
            use std::io::Write as _;
            let message = record.args().to_string();
            let message = tracer::report::escape_controls(&message);
            writeln!(buf, "[{} {}] {message}", record.level(), record.target())
        })
        .init();

    // `serve` drains the ring buffers on one task while others answer requests.
    let mut builder = match cli.command {
        Command::Serve(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracer::report::note(&format!("tracer: cannot start the async runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Record(args) => record::record(args).await,
            Command::Snapshot(args) => snapshot::snapshot(args),
            Command::Report(args) => report::report(args),
            Command::Serve(args) => serve::serve(args).await,
            Command::Top(args) => tracer::top::top(args),
        }
    });
    // Work still under way is abandoned: the command's outcome is decided. Dropping the
    // runtime would wait for every blocking task however long, and serve must exit soon
    // after SIGTERM.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Not eprintln!: a stderr that is gone (a terminal hung up) must not panic.
            // Causes can quote the process's names: no escape sequences on the terminal.
            let line = error_line(&err, cli.verbose > 0);
            tracer::report::note(&format!("tracer: {}", tracer::report::escape_controls(&line)));
            ExitCode::FAILURE
        }
    }
}

/// Help and the version go to stdout (exit 0, or 1 if it cannot be written; help for a
/// command line with no command exits 1); a command line that does not parse is one
/// line on stderr and exit code 1, as every error.
fn usage_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let asked = matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    if asked || err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let written = {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            write!(stdout, "{}", err.render()).and_then(|()| stdout.flush())
        };
        return match written {
            Ok(()) if asked => ExitCode::SUCCESS,
            Ok(()) => ExitCode::FAILURE,
            Err(write_err) => {
                tracer::report::note(&format!("tracer: cannot write to stdout: {write_err}"));
                ExitCode::FAILURE
            }
        };
    }
    // clap's message, its hints (possible values, a tip) kept, its usage and pointer to
    // --help dropped.
    let rendered = err.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("Usage:")
                && !line.starts_with("For more information")
        })
        .collect();
    let line = parts.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    let line = tracer::report::escape_controls(line);
    tracer::report::note(&format!("tracer: {line} (see tracer --help)"));
    ExitCode::FAILURE
}

/// One line: the error and its causes joined by ": ". Without -v each cause is cut to
/// its first line, so a verifier log never floods the terminal.
fn error_line(err: &anyhow::Error, verbose: bool) -> String {
    let mut line = String::new();
    for (depth, cause) in err.chain().enumerate() {
        if depth > 0 {
            line.push_str(": ");
        }
        let text = cause.to_string();
        if verbose {
            line.push_str(&text);
        } else {
            line.push_str(text.lines().next().unwrap_or_default());
        }
    }
    if !verbose && err.chain().any(|cause| cause.to_string().contains('\n')) {
        line.push_str(" (-v for details)");
    }
    line
}
