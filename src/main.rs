//! Wiring: settings, logging, the server, and the exit status.

use std::process::ExitCode;

use log::{error, info, warn};
use webhook_forwarder::config::{self, Stop};
use webhook_forwarder::server::Server;
use webhook_forwarder::{VERSION, deadletter, logging};

/// Exit statuses, documented in the README; the run's own (0, 3, 4) come from `Exit`.
const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    webhook_forwarder::os::return_large_buffers_to_the_kernel();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("probe") {
        return probe(&args[1..]);
    }
    let mut config = match config::load("webhook-forwarder", &args, |name| std::env::var(name).ok())
    {
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
    // Before anything opens a descriptor: client connections get what the reserve
    // leaves, so the endpoint connection and the dead-letter file always have one.
    let open_files = webhook_forwarder::os::raise_open_files_limit();
    let asked = config.max_connections;
    config.max_connections = config::connections_within(asked, open_files);
    if config.max_connections < asked {
        warn!(asked = asked, max_connections = config.max_connections, open_files_limit = open_files.unwrap_or(0), reserve = config::DESCRIPTOR_RESERVE; "fewer client connections than --max-connections: the descriptor limit leaves room for no more");
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
        post_endpoint = config::redact_url(&config.outbound.endpoint).as_str(),
        batch_size = config.batch_size,
        batch_interval = config.describe_interval().as_str(),
        ring_capacity = config.ring_capacity(),
        queue_wait_ms = config.queue_wait.as_millis() as u64,
        max_buffered_bytes = config.max_buffered_bytes,
        // Besides the budget, each connection may hold a request head.
        head_buffers_worst_bytes = config.max_connections as u64 * config.limits.max_head_bytes as u64,
        post_timeout_ms = config.outbound.post_timeout.as_millis() as u64,
        retry_wait_ms = config.outbound.retry_wait.as_millis() as u64,
        max_connections = config.max_connections,
        open_files_limit = open_files.map_or("unknown".into(), |n| n.to_string()).as_str(),
        dead_letter:% = absolute(&config.dead_letter).display(),
        post_headers = header_names(&config.outbound.headers).as_str(),
        ca_file:% = config.outbound.ca_file.as_deref().map_or("-".into(), |p| p.display().to_string()),
        post_compression = config.outbound.compression.name(),
        auth = if config.auth.is_some() { "bearer" } else { "none" },
        proxy = config.outbound.proxy.as_deref().map_or("-".into(), config::redact_url).as_str();
        "listening"
    );
    logging::flush();
    let exit = server.run();
    logging::flush();
    ExitCode::from(exit.status())
}

/// `webhook-forwarder probe [--http ADDR]`: exit 0 when `/healthz` answers 200.
fn probe(args: &[String]) -> ExitCode {
    use webhook_forwarder::probe;
    let http = match probe::parse_args(args) {
        Ok(probe::Command::Help) => {
            print!("{}", probe::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(probe::Command::Check { http }) => http,
        Err(why) => {
            eprintln!("webhook-forwarder probe: {why} (see webhook-forwarder probe --help)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let listen = probe::listen_address(http);
    match probe::target(&listen.addr).and_then(probe::check) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!(
                "webhook-forwarder probe: {why} (address {:?} from {})",
                listen.addr, listen.from
            );
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Header names only: their values are credentials.
fn header_names(headers: &[(String, String)]) -> String {
    let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(",")
    }
}

/// The dead-letter path as the operator will look for it.
fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
