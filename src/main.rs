//! Wiring: settings, logging, the server, and the exit status.

use std::process::ExitCode;

use log::{error, info};
use webhook_forwarder::config::{self, Stop};
use webhook_forwarder::server::{Exit, Server};
use webhook_forwarder::{VERSION, deadletter, logging};

/// Exit statuses, documented in the README.
const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_DELIVERY_FAILED: u8 = 3;
const EXIT_FORCED: u8 = 4;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match config::load("webhook-forwarder", &args, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(Stop::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(Stop::Invalid(message)) => {
            eprintln!("webhook-forwarder: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = logging::init(config.log_level, config.log_format) {
        eprintln!("webhook-forwarder: cannot set up logging: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    let replay = match config
        .replay
        .as_deref()
        .map(deadletter::load_replay)
        .transpose()
    {
        Ok(replay) => replay.flatten(),
        Err(e) => {
            error!(error:% = e; "cannot read the replay file");
            logging::flush();
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let mut server = match Server::bind(&config, replay) {
        Ok(server) => server,
        Err(e) => {
            error!(http = config.http.as_str(), error:% = e; "cannot listen");
            logging::flush();
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    info!(
        version = VERSION,
        listen:% = server.local_addr(),
        post_endpoint = config.post_endpoint.as_str(),
        batch_size = config.batch_size,
        batch_interval = config.describe_interval().as_str(),
        ring_capacity = config.ring_capacity(),
        post_timeout_ms = config.post_timeout.as_millis() as u64,
        retry_wait_ms = config.retry_wait.as_millis() as u64,
        dead_letter:% = absolute(&config.dead_letter).display();
        "listening"
    );
    logging::flush();
    let exit = server.run();
    logging::flush();
    match exit {
        Exit::Drained => ExitCode::SUCCESS,
        Exit::DeliveryFailed => ExitCode::from(EXIT_DELIVERY_FAILED),
        Exit::Forced => ExitCode::from(EXIT_FORCED),
    }
}

/// The dead-letter path as the operator will look for it.
fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
