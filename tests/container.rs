//! The image as operators run it: Docker's health check follows the listen address
//! however it was given, and a restart resends what the last run could not deliver.
//!
//! The Docker test builds the image from this tree (`make static`, then `docker
//! build` under a tag of its own) and removes its containers and image afterwards.
//! Without a Docker daemon it fails under CI and is skipped elsewhere.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Health checks every second: the shortest interval Docker's CLI documents.
const HEALTH_FLAGS: &[&str] = &[
    "--health-interval",
    "1s",
    "--health-timeout",
    "3s",
    "--health-start-period",
    "1s",
    "--health-retries",
    "1",
];

/// Long enough for a loaded 2-core machine, short enough to keep the test under a minute
/// once the image is built.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// `ENV` settings of the Dockerfile, the image's defaults.
fn dockerfile_env() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .flat_map(|rest| rest.split_whitespace())
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn image_setting(name: &str) -> String {
    dockerfile_env()
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("the Dockerfile sets no {name}"))
        .1
}

/// What the image promises on restart, run on the host: the dead-letter file is also
/// the replay file, so a missing one is fine and a written one is resent next start.
#[test]
fn the_images_settings_resend_dead_letters_after_a_restart() {
    let dead_letter = image_setting("WEBHOOK_DEAD_LETTER");
    assert_eq!(image_setting("WEBHOOK_REPLAY"), dead_letter);
    let path = temp_path("image-dead-letter.ndjson");
    let path = path.to_str().unwrap();
    let env = [("WEBHOOK_DEAD_LETTER", path), ("WEBHOOK_REPLAY", path)];
    // Every attempt of the first run fails, everything after succeeds.
    let sink = Sink::start(&["--fail-first", "4"]);
    let endpoint = sink.endpoint();
    let args = [
        "--post-endpoint",
        &endpoint,
        "--batch-size",
        "1",
        "--retry-wait",
        "10ms",
    ];

    let mut first = Forwarder::start(&args, &env);
    first.proc.wait_line("nothing to replay", SOON);
    assert_eq!(first.post(&record(7)).status, 201);
    assert_eq!(first.proc.wait_exit(SOON).code(), Some(3));
    assert!(
        std::fs::read_to_string(path)
            .unwrap()
            .contains("\"user_id\":7")
    );

    let second = Forwarder::start(&args, &env);
    let resent = sink.wait_delivered_records(1, SOON);
    assert_eq!(user_ids(&resent), vec![7]);
    second.proc.wait_line("replay complete", SOON);
    assert!(
        !Path::new(path).exists(),
        "the replayed file was not renamed"
    );
}

#[test]
fn docker_health_follows_the_listen_address_and_restarts_resend() {
    let Some(image) = TestImage::build() else {
        return;
    };
    let endpoint = ["-e", "WEBHOOK_POST_ENDPOINT=http://127.0.0.1:9/"];
    // No network: the health check runs inside the container, on its loopback.
    let isolated = ["--network", "none"];
    let cases: Vec<(&str, Vec<&str>, Vec<&str>, &str)> = vec![
        ("default", vec![], vec![], "[::]:8080"),
        (
            "flag",
            vec![],
            vec!["--http", "127.0.0.1:9090"],
            "127.0.0.1:9090",
        ),
        ("go flag", vec![], vec!["-http=:9091"], "[::]:9091"),
        (
            "env",
            vec!["-e", "WEBHOOK_HTTP=127.0.0.1:9092"],
            vec![],
            "127.0.0.1:9092",
        ),
        (
            "flag over env",
            vec!["-e", "WEBHOOK_HTTP=127.0.0.1:9093"],
            vec!["--http", "127.0.0.1:9094"],
            "127.0.0.1:9094",
        ),
        (
            "behind docker's init",
            vec!["--init"],
            vec!["--http", "127.0.0.1:9095"],
            "127.0.0.1:9095",
        ),
    ];
    let containers: Vec<(&str, Container, &str)> = cases
        .iter()
        .map(|(name, options, args, listen)| {
            let mut run: Vec<&str> = Vec::new();
            run.extend(isolated);
            run.extend(HEALTH_FLAGS);
            run.extend(endpoint);
            run.extend(options);
            (*name, Container::run(&run, &image.tag, args), *listen)
        })
        .collect();
    let started = Instant::now();
    for (name, container, listen) in &containers {
        container.wait_healthy(name, started + HEALTHY_WITHIN);
        let logs = container.logs();
        assert!(
            logs.contains(&format!("listen={listen} ")),
            "{name}: not listening on {listen}:\n{logs}"
        );
    }
    eprintln!(
        "all {} containers healthy after {:?}",
        containers.len(),
        started.elapsed()
    );
    // The image replays its own dead-letter file, and a first start has none.
    let (_, default, _) = &containers[0];
    assert!(default.logs().contains("nothing to replay"));
    drop(containers);

    restart_resends_dead_letters(&image);
}

/// `docker run --restart`: a run that exits 3 leaves its records in /data, and the
/// restarted container sends them. Host networking, so the container reaches a
/// receiver on this host's loopback; the service listens on a port of its choosing.
fn restart_resends_dead_letters(image: &TestImage) {
    let sink = Sink::start(&["--fail-first", "4"]);
    let endpoint = format!("WEBHOOK_POST_ENDPOINT={}", sink.endpoint());
    let container = Container::run(
        &[
            "--network",
            "host",
            "--restart",
            "on-failure:3",
            "-e",
            &endpoint,
        ],
        &image.tag,
        &[
            "--http",
            "127.0.0.1:0",
            "--batch-size",
            "1",
            "--retry-wait",
            "10ms",
        ],
    );
    let addr = container.wait_listening(Instant::now() + SOON);
    let body = record(11);
    let post = format!(
        "POST /log HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(request(addr, &post).status, 201);
    let resent = sink.wait_delivered_records(1, Duration::from_secs(30));
    assert_eq!(user_ids(&resent), vec![11]);
    let restarts = docker_ok(&["inspect", "-f", "{{.RestartCount}}", &container.id]);
    assert_eq!(restarts, "1", "{}", container.logs());
    let deadline = Instant::now() + SOON;
    while !container.logs().contains("replay complete") {
        assert!(Instant::now() < deadline, "{}", container.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The image built from this tree, under a tag of this test run; removed on drop.
struct TestImage {
    tag: String,
}

impl TestImage {
    /// None when Docker is unusable outside CI, after saying so.
    fn build() -> Option<TestImage> {
        if let Err(why) = docker_usable() {
            assert!(
                !in_ci(),
                "Docker is needed in CI (.ci/run starts dockerd): {why}"
            );
            eprintln!("SKIPPED: Docker is not usable here ({why}); CI runs this test");
            return None;
        }
        let started = Instant::now();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
        let make = Command::new("make")
            .args(["-C", ROOT, "static"])
            .arg(format!("CARGO={cargo}"))
            .output()
            .expect("run make");
        assert!(
            make.status.success(),
            "make static failed:\n{}{}",
            String::from_utf8_lossy(&make.stdout),
            String::from_utf8_lossy(&make.stderr)
        );
        let image = TestImage {
            tag: format!("webhook-forwarder-test:{}", std::process::id()),
        };
        docker_ok(&["build", "-q", "-t", &image.tag, ROOT]);
        eprintln!("image {} built in {:?}", image.tag, started.elapsed());
        Some(image)
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.tag]);
    }
}

/// A detached container; removed with its anonymous /data volume on drop.
struct Container {
    id: String,
}

impl Container {
    fn run(options: &[&str], image: &str, args: &[&str]) -> Container {
        let mut all = vec!["run", "-d"];
        all.extend(options);
        all.push(image);
        all.extend(args);
        Container {
            id: docker_ok(&all),
        }
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.id]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn wait_healthy(&self, name: &str, deadline: Instant) {
        loop {
            let state = docker_ok(&[
                "inspect",
                "-f",
                "{{.State.Status}} {{.State.Health.Status}}",
                &self.id,
            ]);
            if state == "running healthy" {
                return;
            }
            if Instant::now() >= deadline || !state.starts_with("running") {
                let health = docker(&["inspect", "-f", "{{json .State.Health}}", &self.id]);
                panic!(
                    "{name}: {state}\nhealth: {}\nlogs:\n{}",
                    String::from_utf8_lossy(&health.stdout),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The address from the startup line of the latest run.
    fn wait_listening(&self, deadline: Instant) -> SocketAddr {
        loop {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|l| l.contains("msg=listening")) {
                return field(line, "listen").parse().unwrap();
            }
            assert!(Instant::now() < deadline, "never listened:\n{logs}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.id]);
    }
}

fn docker_usable() -> Result<(), String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => Err(format!("no docker command: {e}")),
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

/// Runs docker and returns its trimmed stdout; panics with its stderr on failure.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
