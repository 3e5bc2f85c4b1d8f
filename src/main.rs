//! The `portcullis` command: serve | check | hash-secret | gen-key.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
use clap::{Parser, Subcommand, ValueEnum};
use portcullis::config::Config;
use portcullis::server::{Layout, RuntimeModel, Server};

/// mimalloc: the proxy path allocates and frees many small blocks per request (header
/// maps, bodies, futures); glibc's malloc spent about a tenth of the CPU time on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "An OAuth 2.0 enforcing reverse-proxy gateway")]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum RuntimeArg {
    Shared,
    PerCore,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve {
        #[arg(long, default_value = "gateway.toml")]
        config: PathBuf,
        /// Runtime worker threads (default: one per CPU core).
        #[arg(long, env = "PORTCULLIS_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
        threads: Option<u16>,
        /// How connections are spread over the threads: `per-core` (the default) runs one
        /// current-thread runtime per thread, each with its own SO_REUSEPORT listeners
        /// (Linux; elsewhere `shared`); `shared` runs one multi-thread runtime.
        #[arg(long, value_enum, env = "PORTCULLIS_RUNTIME")]
        runtime: Option<RuntimeArg>,
    },
    /// Validate a configuration and print what it would serve.
    Check {
        #[arg(long, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Read a secret or password from stdin and print its argon2id PHC hash.
    HashSecret,
    /// Write a new Ed25519 signing key (PKCS#8 PEM) to a file, or to stdout.
    GenKey {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held until main returns: dropping it writes out what is still queued.
    let _log = init_logging(cli.log_format);
    let default = Command::Serve { config: PathBuf::from("gateway.toml"), threads: None, runtime: None };
    match cli.command.unwrap_or(default) {
        Command::Serve { config, threads, runtime } => serve(config, threads, runtime, cli.log_format),
        Command::Check { config } => check(config),
        Command::HashSecret => hash_secret(),
        Command::GenKey { out } => gen_key(out),
    }
}

/// Log lines (one access line per request among them) are formatted on the thread that
/// logs and written to stderr in batches by a dedicated thread (`portcullis::logging`).
fn init_logging(format: LogFormat) -> portcullis::logging::FlushGuard {
    use std::io::IsTerminal;
    // `RUST_LOG`, with the libraries that log peer input kept quiet (`logging::filter_directives`).
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = tracing_subscriber::EnvFilter::try_new(portcullis::logging::filter_directives(rust_log.as_deref()))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = portcullis::logging::BatchedStderr::new();
    // Access lines skip tracing's field formatting; with colours (a terminal) they do not.
    if !ansi {
        let f = match format {
            LogFormat::Pretty => portcullis::logging::Format::Pretty,
            LogFormat::Json => portcullis::logging::Format::Json,
        };
        portcullis::logging::install_access_sink(writer.clone(), f);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(portcullis::logging::CachedClock)
        .with_writer(writer);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// A file-size limit (`ulimit -f`) kills a process with SIGXFSZ at the write that crosses
/// it — mid-grant, no log line. Ignored, that write fails with EFBIG instead and the
/// store's I/O-failure path takes over (503, then it heals once the limit is lifted).
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: signal(2) with SIG_IGN installs no handler code and touches no memory of
    // ours; the disposition is process-wide, set before the runtime starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// A fatal start error: one JSON log line under `--log-format json` (what a log pipeline
/// parses), else the plain text on stderr.
fn fatal(format: LogFormat, error: &dyn std::fmt::Display) -> ExitCode {
    match format {
        LogFormat::Json => tracing::error!(error = %error, "cannot start"),
        LogFormat::Pretty => eprintln!("{error}"),
    }
    ExitCode::FAILURE
}

/// The default runtime model is per core: measured against the shared multi-thread runtime
/// at `--threads 2` it used no more CPU per request and served more (docs/performance.md,
/// "Both cores").
fn serve(path: PathBuf, threads: Option<u16>, model: Option<RuntimeArg>, format: LogFormat) -> ExitCode {
    ignore_file_size_signal();
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return fatal(format, &e),
    };
    let layout = match model.unwrap_or(RuntimeArg::PerCore) {
        RuntimeArg::Shared => Layout::shared(),
        RuntimeArg::PerCore => {
            let n = threads.map(usize::from).or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()));
            Layout::per_core(n.unwrap_or(1))
        }
    };
    // Per core: this thread's runtime is worker 0 (and runs the background tasks and the
    // admin listener); `Server::bind_with` starts the others. One worker: the
    // current-thread scheduler does the same work without the cross-thread machinery
    // (work-stealing queues, unparking) a pool of one never uses.
    let mut builder = match threads {
        _ if layout.model == RuntimeModel::PerCore => tokio::runtime::Builder::new_current_thread(),
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fatal(format, &format_args!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        if matches!(model, Some(RuntimeArg::PerCore)) && layout.model != RuntimeModel::PerCore {
            tracing::warn!("--runtime per-core needs SO_REUSEPORT load balancing (Linux); running the shared runtime");
        }
        let server = match Server::bind_with(config, layout).await {
            Ok(s) => s,
            Err(e) => return fatal(format, &format_args!("{}: {e}", path.display())),
        };
        if layout.model == RuntimeModel::PerCore {
            tracing::info!(threads = layout.threads, "one current-thread runtime per thread, SO_REUSEPORT listeners");
        }
        for (addr, tls) in server.local_addrs() {
            tracing::info!(address = %addr, scheme = if tls { "https" } else { "http" }, "listening");
        }
        if let Some(addr) = server.admin_addr() {
            tracing::info!(address = %addr, "admin listening (/healthz, /readyz, /metrics)");
        }
        tracing::info!(config = %path.display(), "reloads on SIGHUP and when the config or TLS files change");
        let signals = stop_signals();
        let mut second = signals.clone();
        let mut first = signals;
        let shutdown = async move {
            let _ = first.wait_for(|n| *n >= 1).await;
        };
        let hurry = async move {
            let _ = second.wait_for(|n| *n >= 2).await;
        };
        server.run(shutdown, hurry).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Counts SIGTERM and ctrl-c (SIGINT): the first starts the drain, the second cuts it short.
fn stop_signals() -> tokio::sync::watch::Receiver<u32> {
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            #[cfg(unix)]
            let got = match term.as_mut() {
                Some(term) => tokio::select! {
                    t = term.recv() => t.is_some(),
                    c = tokio::signal::ctrl_c() => c.is_ok(),
                },
                None => tokio::signal::ctrl_c().await.is_ok(),
            };
            #[cfg(not(unix))]
            let got = tokio::signal::ctrl_c().await.is_ok();
            if !got {
                // No more signals can arrive: keep the count where it is.
                std::future::pending::<()>().await;
            }
            tx.send_modify(|n| *n = n.saturating_add(1));
        }
    });
    rx
}

/// Refuses what `serve` would refuse: the file itself, then what it names (key, TLS and
/// CA files, the store location), read but never written. Warnings go to stderr with
/// `file:line` and do not fail the check.
fn check(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for w in config.warnings() {
        eprintln!("{w}");
    }
    if let Err(e) = portcullis::reload::preflight(&config) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    finish_output(print_check(&mut out, &path, &config).and_then(|()| out.flush()))
}

/// What `check` prints about a valid configuration.
fn print_check(out: &mut impl Write, path: &Path, config: &Config) -> io::Result<()> {
    match config.warnings().len() {
        0 => writeln!(out, "{}: OK", path.display())?,
        n => writeln!(out, "{}: OK, with {n} warning(s) (on stderr)", path.display())?,
    }
    config.write_summary(out)
}

fn hash_secret() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let secret = input.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&input);
    if secret.is_empty() {
        eprintln!("empty secret: pipe the secret on stdin, e.g. `printf %s 's3cret' | portcullis hash-secret`");
        return ExitCode::FAILURE;
    }
    let salt = SaltString::generate(&mut OsRng);
    match argon2::Argon2::default().hash_password(secret.as_bytes(), &salt) {
        Ok(hash) => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            finish_output(writeln!(out, "{hash}").and_then(|()| out.flush()))
        }
        Err(e) => {
            eprintln!("hashing failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn gen_key(out: Option<PathBuf>) -> ExitCode {
    let pem = match portcullis::tokens::keys::generate_ed25519_pem() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("key generation failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    match out {
        None => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            finish_output(out.write_all(pem.as_bytes()).and_then(|()| out.flush()))
        }
        Some(path) => match portcullis::tokens::keys::write_private(&path, pem.as_bytes()) {
            Ok(()) => {
                eprintln!("wrote {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
    }
}

/// The end of a command that printed to stdout. A reader that went away (`| head -1`)
/// ends it quietly and successfully, like any Unix filter; other write errors fail it.
fn finish_output(written: io::Result<()>) -> ExitCode {
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
