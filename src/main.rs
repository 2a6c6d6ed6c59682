use s3_synchronizer::cli::{self, Command};
use s3_synchronizer::commands::mount::{self, Daemonized};
use s3_synchronizer::commands::status;
use s3_synchronizer::commands::sync::{self, SyncOutcome};
use s3_synchronizer::errors;
use s3_synchronizer::progress::LogWriter;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn init_tracing(debug: bool) {
    let default = if debug {
        "s3_synchronizer=debug,fuser=warn,info"
    } else {
        "s3_synchronizer=info,fuser=error,warn"
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default))
        // fuser's session, once `fusermount -u` has unmounted it, unmounts again as it ends and
        // warns that it could not: its only warning, and always a false alarm.
        .add_directive("fuser::session=error".parse().expect("a valid directive"))
        // The SDK logs an error when a transient failure came before any connection was made
        // (nothing to close); the retry that follows is ours to report.
        .add_directive(
            "aws_smithy_runtime::client::http::connection_poisoning=off"
                .parse()
                .expect("a valid directive"),
        );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter::stderr())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Bad flags or mounts JSON: one line, exit code 2.
fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

/// A run that could not do its job: one line, each cause once, exit code 1.
fn failure(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", errors::chain(e.as_ref()));
    ExitCode::FAILURE
}

/// The runtime of the downloads; `on_thread_start` runs on each of its threads as it starts.
fn runtime(on_thread_start: fn()) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(on_thread_start)
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Caps glibc's malloc arenas at two (unless `MALLOC_ARENA_MAX` says otherwise). glibc gives
/// threads that allocate at once arenas of their own, up to eight per core, and memory freed in
/// one is not reused by another, so the runtime's many threads grow resident memory for no gain
/// in speed (measurements: docs/PERFORMANCE.md, "Malloc arenas").
///
/// And maps every allocation of 1 MiB or more on its own (unless `MALLOC_MMAP_THRESHOLD_` says
/// otherwise): those are a pass's tables, a row per object (the listing, its layout, the
/// planned downloads, the manifest's rows), and memory so mapped goes back to the system when
/// it is freed, and grows and shrinks without a copy. glibc's own threshold starts at 128 KiB
/// but rises to the size of each such block freed, up to 32 MiB, after which the tables come
/// from the heap, where they stay resident when freed and leave holes among what stays
/// (measurements: docs/PERFORMANCE.md, "Large blocks"). Reads, writes and downloads use
/// smaller buffers.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let unset = |name| std::env::var_os(name).is_none();
        // SAFETY: mallopt only sets an allocator parameter; called before any other thread
        // exists.
        unsafe {
            if unset("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
            if unset("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
        }
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = cli::parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Sync(args) => {
            let config = match args.into_config() {
                Ok(c) => c,
                Err(e) => return usage_error(e),
            };
            init_tracing(config.debug);
            let runtime = match runtime(|| {}) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match runtime.block_on(sync::sync(config)) {
                Ok(SyncOutcome::Complete) => ExitCode::SUCCESS,
                Ok(SyncOutcome::Failed) => ExitCode::FAILURE,
                Ok(SyncOutcome::Interrupted) => ExitCode::from(130),
                Err(e) => failure(&e),
            }
        }
        Command::Status(args) => match status::status(&args.local_copy(), args.wait) {
            Ok(saved) => ExitCode::from(saved.code()),
            Err(e) => usage_error(e),
        },
        Command::Mount(args) => {
            let config = match args.into_config() {
                Ok(c) => c,
                Err(e) => return usage_error(e),
            };
            init_tracing(config.sync.debug);
            if config.daemon {
                return match mount::daemonize(&config) {
                    Ok(Daemonized::Mounted) => ExitCode::SUCCESS,
                    // It has said why, on the standard error it shares with this process.
                    Ok(Daemonized::Exited(code)) => ExitCode::from(code),
                    Err(e) => failure(&e),
                };
            }
            // The background download yields the CPU to readers.
            let runtime = match runtime(mount::lower_thread_priority) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let result = mount::mount(config, &runtime);
            // Background downloads have been cancelled; do not wait for their blocking writes.
            runtime.shutdown_background();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failure(&e),
            }
        }
    }
}
