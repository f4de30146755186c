//! The image as operators run it: a restart resends what the last run could not deliver.

mod common;

use std::path::Path;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

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
