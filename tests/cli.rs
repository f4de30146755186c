//! Command-line behaviour outside the service proper: the probe's own flags and
//! the bundled receiver's version.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;

fn forwarder(args: &[&str], listen_env: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_webhook-forwarder"))
        .args(args)
        .env("WEBHOOK_HTTP", listen_env)
        .output()
        .unwrap()
}

#[test]
fn probe_help_prints_the_usage_and_probes_nothing() {
    // A listener that would see the probe's connection, were one made.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    for args in [
        &["probe", "--help"][..],
        &["probe", "-h"],
        &["probe", "-help"],
        &["probe", "help"],
        &["probe", "--http", &addr, "--help"],
    ] {
        let out = forwarder(args, &addr);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("Usage: webhook-forwarder probe [--http ADDR]"),
            "{args:?}: {stdout}"
        );
        assert!(stdout.contains("PID 1"), "{stdout}");
        assert!(out.stderr.is_empty(), "{args:?}");
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(listener.accept().is_err(), "probe --help connected");
}

#[test]
fn probe_refuses_what_it_does_not_know() {
    for (args, says) in [
        (&["probe", "--htp", ":1"][..], "unknown argument \"--htp\""),
        (&["probe", "--http"], "--http needs a value"),
        (&["probe", "extra"], "unknown argument \"extra\""),
    ] {
        let out = forwarder(args, "127.0.0.1:9");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(stderr.contains("probe --help"), "{stderr}");
    }
}

#[test]
fn a_failed_probe_says_which_address_and_where_it_came_from() {
    // Nothing listens on port 9; PID 1 here is not the service, so WEBHOOK_HTTP counts.
    let out = forwarder(&["probe"], "127.0.0.1:9");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to 127.0.0.1:9")
            && stderr.contains("(address \"127.0.0.1:9\" from WEBHOOK_HTTP)"),
        "{stderr}"
    );
    let out = forwarder(&["probe", "-http=127.0.0.1:9"], ":1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("from the probe's --http"), "{stderr}");
}

#[test]
fn the_receiver_prints_its_version_and_help() {
    let sink = |arg: &str| {
        Command::new(env!("CARGO_BIN_EXE_webhook-sink"))
            .arg(arg)
            .output()
            .unwrap()
    };
    let out = sink("--version");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("webhook-sink {}\n", env!("CARGO_PKG_VERSION"))
    );
    for help in ["--help", "-h"] {
        let out = sink(help);
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("Usage: webhook-sink"));
    }
    let out = sink("--no-such-flag");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn every_way_of_asking_for_help_prints_the_usage_with_probe() {
    for args in [&["--help"][..], &["-help"], &["-h"], &["help"]] {
        let out = forwarder(args, "127.0.0.1:9");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("Usage: webhook-forwarder"),
            "{args:?}: {stdout}"
        );
        assert!(
            stdout.contains(
                "webhook-forwarder probe [--http ADDR]: exit 0 when /healthz answers 200"
            ),
            "{args:?}: {stdout}"
        );
        assert!(stdout.contains("WEBHOOK_POST_ENDPOINT"), "{stdout}");
        assert!(out.stderr.is_empty(), "{args:?}");
    }
    // Still refused: a word that is not a command, a short flag that is not -h.
    for args in [&["helpme"][..], &["-x"]] {
        let out = forwarder(args, "127.0.0.1:9");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
