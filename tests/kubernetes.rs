//! The Kubernetes manifest in the README, checked as it stands there, so the two
//! cannot drift apart: against the API schemas offline with `kubernetes-validate`
//! (installed from PyPI when missing), then for what the schemas cannot know.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use webhook_forwarder::duration::parse_go_duration;

/// Pinned, so the bundled schemas below are there.
const VALIDATOR: &str = "kubernetes-validate==1.37.0";
/// An older release still widely run and the newest the validator bundles.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// The service's defaults for the settings that bound a drain (`--help` gives them).
const POST_TIMEOUT: &str = "10s";
const RETRY_WAIT: &str = "2s";
/// A failing batch takes this many attempts, with a retry wait between two.
const ATTEMPTS: u32 = 4;
/// What the grace period must leave beyond the longest drain: the process exiting,
/// a request answered after the signal, a slow node.
const MARGIN: Duration = Duration::from_secs(10);

/// The first `yaml` block of the README's Kubernetes section.
fn readme_manifest() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Kubernetes\n"))
        .expect("README has a Kubernetes section");
    let start = section
        .find("```yaml\n")
        .expect("the Kubernetes section has a yaml block")
        + "```yaml\n".len();
    let len = section[start..]
        .find("\n```")
        .expect("the yaml block is closed");
    section[start..start + len + 1].to_owned()
}

fn python(args: &[&str]) -> Output {
    Command::new("python3")
        .args(args)
        .output()
        .expect("python3 runs (CI installs it)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Installs the validator unless it is importable; it brings PyYAML too.
fn ensure_validator() {
    if python(&["-c", "import kubernetes_validate, yaml"])
        .status
        .success()
    {
        return;
    }
    let out = python(&["-m", "pip", "install", "--quiet", VALIDATOR]);
    assert!(out.status.success(), "pip install failed:\n{}", text(&out));
}

#[test]
fn the_readme_manifest_is_valid_and_fits_the_service() {
    let manifest = readme_manifest();
    let path = common::temp_path("manifest.yaml");
    std::fs::write(&path, &manifest).unwrap();
    let path = path.to_str().unwrap();
    ensure_validator();

    for version in KUBERNETES_VERSIONS {
        let out = python(&[
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            version,
            path,
        ]);
        let said = text(&out);
        assert!(out.status.success(), "Kubernetes {version}:\n{said}");
        // Three resources, each validated (not skipped for an unknown kind).
        assert_eq!(said.matches(" passed for resource ").count(), 3, "{said}");
    }

    let docs = as_json(path);
    check_fits_the_service(&docs);
}

/// The manifest's documents as JSON, through the PyYAML the validator brought.
fn as_json(path: &str) -> Vec<Value> {
    let out = python(&[
        "-c",
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        path,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// Every label of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

fn seconds(go: &str) -> Duration {
    Duration::from_nanos(parse_go_duration(go).expect("a Go duration") as u64)
}

fn check_fits_the_service(docs: &[Value]) {
    let sets = of_kind(docs, "StatefulSet");
    assert_eq!(sets.len(), 1, "one StatefulSet");
    let set = sets[0];
    let pod = &set["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert!(
        selects(&set["spec"]["selector"]["matchLabels"], labels),
        "the StatefulSet's selector does not match its pods"
    );
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let env = |name: &str| {
        container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
    };
    assert!(
        env("WEBHOOK_POST_ENDPOINT").is_some(),
        "the endpoint is required"
    );

    // Probes: liveness on /healthz, readiness on /readyz, both on the served port.
    let port_named = |name: &Value| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| &p["name"] == name || &p["containerPort"] == name)
            .map(|p| p["containerPort"].as_u64().unwrap())
    };
    let listen_port = env("WEBHOOK_HTTP")
        .and_then(|http| http.rsplit(':').next()?.parse().ok())
        .unwrap_or(8080);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_named(&get["port"]), Some(listen_port), "{probe} port");
    }

    // The grace period outlasts the longest drain.
    let post_timeout = seconds(env("WEBHOOK_POST_TIMEOUT").unwrap_or(POST_TIMEOUT));
    let retry_wait = seconds(env("WEBHOOK_RETRY_WAIT").unwrap_or(RETRY_WAIT));
    let longest_drain = post_timeout * ATTEMPTS + retry_wait * (ATTEMPTS - 1);
    let grace = Duration::from_secs(
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds is set"),
    );
    assert!(
        grace >= longest_drain + MARGIN,
        "grace period {grace:?} is not the longest drain {longest_drain:?} plus {MARGIN:?}"
    );

    // Each pod's own claim holds the dead-letter file, where the image keeps it.
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/data")
        .expect("a volume mounted on /data");
    let claims = set["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert!(
        claims
            .iter()
            .any(|c| c["metadata"]["name"] == mount["name"]),
        "/data is not a volume claim template"
    );
    assert_eq!(
        pod["spec"]["securityContext"]["fsGroup"], 65534,
        "the image's user must be able to write the claim"
    );

    // The governing Service is headless; the clients' Service reaches the pods.
    let services = of_kind(docs, "Service");
    let governing = services
        .iter()
        .find(|s| s["metadata"]["name"] == set["spec"]["serviceName"])
        .expect("the serviceName is in the manifest");
    assert_eq!(
        governing["spec"]["clusterIP"], "None",
        "the governing Service must be headless"
    );
    let front = services
        .iter()
        .find(|s| s["spec"]["clusterIP"] != "None")
        .expect("a Service for clients");
    assert!(
        selects(&front["spec"]["selector"], labels),
        "the Service does not select the pods"
    );
    for port in front["spec"]["ports"].as_array().unwrap() {
        assert_eq!(port_named(&port["targetPort"]), Some(listen_port));
    }
}
