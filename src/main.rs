//! The `callgate` binary: flags → settings, logging, the runtime, signals; then the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use callgate::logging::LogGuard;
use callgate::settings::{CheckArgs, Cli, Command, ImportArgs, LogFormat, ProbeArgs, Settings, StoreCommand};
use callgate::Listeners;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's own message runs over several lines and quotes values; start-up errors
            // are one line, with no secret in it.
            eprintln!("callgate: {}", callgate::settings::error_line(&e));
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Check(args)) => check(&args),
        Some(Command::Demo(args)) => {
            // Declared after the guard, so dropped before it: lines logged while the runtime
            // shuts down are still written.
            let _guard = init_logging(args.log_format);
            let runtime = runtime();
            runtime.block_on(async {
                let signals = Signals::install();
                match callgate::demo::run(args.listen, args.admin_listen, signals.first()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&e),
                }
            })
        }
        Some(Command::Probe(args)) => probe(args),
        Some(Command::Store(args)) => match args.command {
            StoreCommand::Import(args) => store_import(&args),
        },
        None => {
            let settings = match Settings::from_args(cli.serve) {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            let _guard = init_logging(settings.log_format);
            if let Some(warning) = settings.signature_warning() {
                tracing::warn!("{warning}");
            }
            let runtime = runtime();
            runtime.block_on(async {
                // Installed before anything else, so a SIGTERM during a long first load is a
                // clean shutdown rather than the default kill.
                let signals = Signals::install();
                let listeners = match Listeners::bind(settings.listen, settings.admin_listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!(
                            "callgate: cannot bind {} / {}: {e}",
                            settings.listen, settings.admin_listen
                        );
                        return ExitCode::from(2);
                    }
                };
                match callgate::run(settings, listeners, signals.first()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&e),
                }
            })
        }
    }
}

/// Prints a start-up error as one line and returns exit status 2.
fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("callgate: {e}");
    ExitCode::from(2)
}

/// The control runtime: start-up, signals, the admin listener, reloads and admin writes, on
/// the main thread (file reads and saves go to its blocking pool). Calls are served by the
/// call workers, each on a runtime of its own (see [`callgate::workers`]).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("the tokio runtime starts")
}

/// Logs on stderr through [`callgate::logging`]'s buffered writer, so neither a slow terminal
/// or collector nor the `write` itself ever stalls a call; `RUST_LOG` filters (default `info`).
fn init_logging(format: LogFormat) -> LogGuard {
    let (writer, guard) = callgate::logging::writer(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Json => builder.event_format(callgate::logging::JsonLines).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    guard
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must run inside the runtime.
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler installs"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler installs"),
        }
    }

    /// Completes on the first signal; a second one exits at once.
    async fn first(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
            eprintln!("callgate: second signal; exiting at once");
            std::process::exit(1);
        });
    }
}

/// `callgate check`: exit 0 (warnings allowed), or 1 with one line per problem.
fn check(args: &CheckArgs) -> ExitCode {
    let options = callgate::routes::ValidateOptions { allow_insecure_gates: args.allow_insecure_gates };
    let bytes = match std::fs::read(&args.routes) {
        Ok(b) => b,
        Err(e) => {
            println!("{}: cannot read: {e}", args.routes.display());
            return ExitCode::from(1);
        }
    };
    match callgate::routes::RouteTable::parse(&bytes, &options) {
        Err(e) => {
            for problem in &e.problems {
                println!("{}: {problem}", args.routes.display());
            }
            ExitCode::from(1)
        }
        Ok(table) => {
            if let Some(path) = &args.credentials {
                let credentials = match std::fs::read(path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| callgate::credentials::parse(&b))
                {
                    Ok(c) => c,
                    Err(reason) => {
                        println!("{}: {reason}", path.display());
                        return ExitCode::from(1);
                    }
                };
                let missing = table
                    .credential_ids()
                    .into_iter()
                    .filter(|(_, id)| !credentials.contains_key(id.as_str()))
                    .collect::<Vec<_>>();
                for (place, id) in &missing {
                    println!(
                        "{}: {place}: credential_id {id:?} is not in {}",
                        args.routes.display(),
                        path.display()
                    );
                }
                if !missing.is_empty() {
                    return ExitCode::from(1);
                }
            }
            for warning in
                callgate::routes::timeout_warnings(&table, args.gate_timeout, args.upstream_timeout)
            {
                println!("{}: warning: {warning}", args.routes.display());
            }
            let waits = callgate::routes::context_wait_warnings(
                &table,
                args.gate_timeout,
                args.upstream_timeout,
                args.twilio_deadline,
            );
            for warning in waits {
                println!("{}: warning: {warning}", args.routes.display());
            }
            println!(
                "{}: ok: {} agents, {} numbers",
                args.routes.display(),
                table.agent_count(),
                table.number_count()
            );
            ExitCode::SUCCESS
        }
    }
}

/// `callgate store import`: the routes file validated as at start-up, then written to the
/// shared store whole; exit 0, or 1 with one line per problem and nothing written.
fn store_import(args: &ImportArgs) -> ExitCode {
    let callgate::settings::Store::Redis(url) = &args.store else {
        eprintln!("callgate: store import needs --store redis://[:password@]host[:port][/db]");
        return ExitCode::from(2);
    };
    let options = callgate::routes::ValidateOptions { allow_insecure_gates: args.allow_insecure_gates };
    let bytes = match std::fs::read(&args.routes) {
        Ok(b) => b,
        Err(e) => {
            println!("{}: cannot read: {e}", args.routes.display());
            return ExitCode::from(1);
        }
    };
    let table = match callgate::routes::RouteTable::parse(&bytes, &options) {
        Ok(table) => table,
        Err(e) => {
            for problem in &e.problems {
                println!("{}: {problem}", args.routes.display());
            }
            return ExitCode::from(1);
        }
    };
    drop(bytes);
    match runtime().block_on(callgate::routes::shared::import(url, &args.store_prefix, &table)) {
        Ok(version) => {
            println!(
                "{}: imported into {} under {:?}: {} agents, {} numbers (version {version})",
                args.routes.display(),
                url.shown(),
                args.store_prefix,
                table.agent_count(),
                table.number_count()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}: cannot write: {e}; nothing written", url.shown());
            ExitCode::from(1)
        }
    }
}

/// `callgate probe`: the report (or `--json`) on stdout, progress on a terminal's stderr; exit 0
/// for pass or warn, 1 for fail, 2 when the probe cannot start.
fn probe(args: ProbeArgs) -> ExitCode {
    use callgate::probe::{Options, Progress, Ticker, Verdict};
    let options = Options {
        url: args.url,
        secret: args.secret,
        header: args.header,
        n: args.n as usize,
        timeout: args.timeout,
        to: args.to,
        from: args.from,
        ca_file: args.ca_file,
    };
    runtime().block_on(async {
        let progress = std::sync::Arc::new(Progress::default());
        let ticker = std::io::stderr()
            .is_terminal()
            .then(|| Ticker::start(std::sync::Arc::clone(&progress), &options));
        let result = callgate::probe::run(&options, &progress).await;
        if let Some(ticker) = ticker {
            ticker.stop().await;
        }
        let report = match result {
            Ok(report) => report,
            Err(e) => return fail(&e),
        };
        if args.json {
            println!("{}", report.to_json());
        } else {
            print!("{}", report.render_text());
        }
        match report.verdict {
            Verdict::Pass | Verdict::Warn => ExitCode::SUCCESS,
            Verdict::Fail => ExitCode::from(1),
        }
    })
}
