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
    let cli = Cli::parse();
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
