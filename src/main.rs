use s3_synchronizer::app::{self, SyncOutcome};
use s3_synchronizer::cli::{self, Command};
use s3_synchronizer::progress::LogWriter;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn init_tracing(debug: bool) {
    let default = if debug {
        "s3_synchronizer=debug,info"
    } else {
        "s3_synchronizer=info,warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter::stderr())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = cli::parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let Command::Sync(args) = cli.command;
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.debug);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::sync(config)) {
        Ok(SyncOutcome::Complete) => ExitCode::SUCCESS,
        Ok(SyncOutcome::Failed) => ExitCode::FAILURE,
        Ok(SyncOutcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
