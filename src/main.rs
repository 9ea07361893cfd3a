//! The `levee` command: parse the CLI, load the config, start the runtime. No logic.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use levee::config::RuntimeLayout;

/// mimalloc through its plain entry points (see [`levee::alloc`]).
#[global_allocator]
static ALLOCATOR: levee::alloc::MiMalloc = levee::alloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "levee",
    version,
    about = "Connection-limiting, load-shedding HTTP reverse proxy"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// Take over the listeners of the running levee instead of binding them:
        /// start this, then send the running levee SIGQUIT.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file: print `ok` and a summary, or every error; exit 0 or 1.
    /// Backend names are looked up once, and a warning printed for each that does not
    /// resolve.
    Check {
        #[arg(short, long)]
        config: PathBuf,
        /// Do not look backend names up (a config repository's CI, without the
        /// production nameservers).
        #[arg(long)]
        offline: bool,
    },
    /// Start embedded replicas in two zones, the proxy and the admin page, then drive a
    /// load ramp through them so you can watch levee shed.
    Demo(levee::demo::DemoArgs),
}

/// Logs go to stderr; `LEVEE_LOG` (a tracing filter such as `debug` or
/// `levee=debug,hyper=info`) overrides `default`.
fn init_logs(format: LogFormat, default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEVEE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The runtime levee starts on. With `server.runtime = "per_thread"` it runs only the
/// control plane (probes, admin, reloads, signals) and client connections are served
/// by the worker threads' own runtimes (`levee::workers`); with `"multi_thread"` it
/// serves everything on `threads` work-stealing workers.
fn runtime(layout: RuntimeLayout, threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match layout {
        RuntimeLayout::PerThread => levee::workers::runtime_builder()
            .thread_name("levee")
            .build(),
        RuntimeLayout::MultiThread => levee::workers::with_hooks(
            tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)),
        )
        .thread_name("levee")
        .build(),
    }
}

/// The idle hook of levee's threads: mimalloc keeps freed pages for reuse and purges
/// them only after a delay and at its next call on that thread, so after a burst an
/// idle levee would go on holding the burst's memory (measured: 10,000 idle keep-alive
/// connections read 1 s after the burst, 5.4 KiB each; with the pages returned, see
/// benches/README.md). At most once a second per thread, when it parks.
fn return_free_memory() {
    // SAFETY: mi_collect only walks and releases the calling thread's own free pages.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Loads the TLS certificate pairs `cfg` names, as `run` would: prints every problem
/// (config key, file, what is wrong) and returns false if any; prints warnings (an SNI
/// name its certificate does not cover, a certificate expired or expiring within 14
/// days) and goes on.
fn certificates_load(path: &std::path::Path, cfg: &levee::config::Config) -> bool {
    let Some(tls) = &cfg.server.tls else {
        return true;
    };
    match levee::tls::check(tls) {
        Ok(warnings) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            true
        }
        Err(errors) => {
            eprintln!(
                "{}: {} TLS certificate error(s)",
                path.display(),
                errors.len()
            );
            for e in &errors {
                eprintln!("  {e}");
            }
            false
        }
    }
}

/// Looks up the backend names `cfg` gives, as `run` would at start, and prints a
/// warning for each that does not resolve now (not an error: its entries stay empty
/// until it does).
fn names_resolve(cfg: &levee::config::Config) {
    if cfg.backend_names().is_empty() {
        return;
    }
    let warnings = match runtime(RuntimeLayout::PerThread, 1) {
        Ok(rt) => rt.block_on(levee::discovery::check(cfg)),
        Err(e) => vec![format!("cannot look backend names up: {e}")],
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    levee::workers::set_idle_hook(return_free_memory);
    // The demo prints its own per-second view; its logs stay at warnings unless asked.
    let default = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    init_logs(cli.log_format, default);
    match cli.command {
        Command::Check { config, offline } => match levee::config::load(&config) {
            Ok(cfg) => {
                if !certificates_load(&config, &cfg) {
                    return ExitCode::FAILURE;
                }
                if !offline {
                    names_resolve(&cfg);
                }
                println!("ok");
                print!("{}", cfg.explain());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Run { config, upgrade } => {
            let cfg = match levee::config::load(&config) {
                Ok(cfg) => cfg,
                Err(errors) => {
                    eprintln!("{}: invalid config", config.display());
                    for e in &errors.0 {
                        eprintln!("  {e}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            if !certificates_load(&config, &cfg) {
                return ExitCode::FAILURE;
            }
            let rt = match runtime(cfg.server.runtime, cfg.server.threads) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(levee::app::run_until_signal(cfg, config, upgrade)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("levee: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => {
            let rt = match runtime(RuntimeLayout::MultiThread, 2) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(levee::demo::run(args));
            rt.shutdown_timeout(Duration::from_millis(200));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("levee demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
