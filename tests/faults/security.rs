//! Secrets never shown, librdkafka security settings passed through, and file names
//! built from ids only, whatever the inputs say.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::checks;
use crate::support;

fn defectflow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_defectflow")).args(args).output().expect("run defectflow")
}

fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path);
            }
        }
    }
    files
}

/// Reference data whose ids are paths (`../`, absolute) reaches work orders, while
/// every file the run writes stays under its output folder, named from ids it made.
#[test]
fn ids_that_look_like_paths_never_name_a_file() {
    let _serial = crate::support::kafka::serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let truth = support::demo_plant_footage(dir.path());
    let escapes = [
        ("CV-101-PUL", format!("../../../../{}/escape-asset", dir.path().display())),
        ("MT-204", format!("{}/escape-absolute", dir.path().display())),
        ("T-ADA", "../../escape-technician".to_owned()),
        ("PUL-600-SHELL", "/escape-part/../..".to_owned()),
    ];
    let reference = dir.path().join("reference");
    std::fs::create_dir_all(&reference).expect("reference");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
    for entry in std::fs::read_dir(&demo).expect("demo reference") {
        let path = entry.expect("entry").path();
        let mut text = std::fs::read_to_string(&path).expect("reference file");
        for (id, escape) in &escapes {
            text = text.replace(&format!("\"{id}\""), &serde_json::to_string(escape).expect("json"));
        }
        std::fs::write(reference.join(path.file_name().expect("name")), text).expect("write");
    }
    let mut toml = format!(
        "[runtime]\nworkers = 2\n[anomaly]\ncommission_s = 0\n[model]\nbatch_size = 4\n[plant]\nreference = \"{}\"\n",
        reference.display()
    );
    toml.push_str(&support::recorded_cameras(dir.path(), &truth, ""));
    let config = dir.path().join("paths.toml");
    std::fs::write(&config, toml).expect("config");
    let before = files_under(dir.path());
    let out = dir.path().join("out");
    let output =
        defectflow(&["run", "--config", config.to_str().expect("utf-8"), "--out", out.to_str().expect("utf-8")]);
    assert!(output.status.success(), "run failed: {}", String::from_utf8_lossy(&output.stderr));

    // The ids went through to the work orders...
    let revisions = checks::jsonl_work_orders(&out);
    let assets: BTreeSet<&str> = revisions.iter().filter_map(|w| w["asset_id"].as_str()).collect();
    assert!(assets.contains(escapes[0].1.as_str()) && assets.contains(escapes[1].1.as_str()), "{assets:?}");
    // ...and every new file is under the output folder, named by the run.
    for file in files_under(dir.path()).difference(&before) {
        let relative = file.strip_prefix(&out).unwrap_or_else(|_| panic!("{} is outside the output", file.display()));
        let parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let named_by_ids = match parts.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["work-orders.jsonl" | "work-orders.jsonl.progress"] => true,
            ["evidence", track, image] => {
                track.len() == 19
                    && track.starts_with("TR-")
                    && track[3..].chars().all(|c| c.is_ascii_hexdigit())
                    // The evidence image, and the frame as it was beside it.
                    && image.strip_suffix(".jpg").map(|n| n.strip_suffix(".frame").unwrap_or(n)).is_some_and(|n| {
                        !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())
                    })
            }
            ["audit", ".locks", table, lock] => {
                table.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && lock.strip_prefix("date=").and_then(|l| l.strip_suffix(".lock")).is_some_and(|d| d.len() == 10)
            }
            ["audit", table, date, name] => {
                table.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && date.strip_prefix("date=").is_some_and(|d| d.len() == 10)
                    && (name.ends_with(".parquet") || name.starts_with('.'))
            }
            ["audit", name] => !name.contains('/'),
            _ => false,
        };
        assert!(named_by_ids, "{} is not named from ids", relative.display());
    }
    assert!(!dir.path().join("escape-asset").exists() && !dir.path().join("escape-absolute").exists());
}

/// A camera id is a name, never a path: the config says which field is wrong.
#[test]
fn a_camera_id_that_is_a_path_fails_the_config_with_exit_code_78() {
    let dir = tempfile::tempdir().expect("tempdir");
    for id in ["../cam", "/tmp/cam", "cam/../../x", ".."] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, support::camera_toml(id, "synth://belt?seed=1&fps=15", "")).expect("config");
        let output = defectflow(&["check-config", config.to_str().expect("utf-8")]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{id} accepted");
        assert!(stderr.contains("cameras[0].id"), "{id}: {stderr}");
        // EX_CONFIG, which the shipped systemd unit does not restart on; `run` as well.
        assert_eq!(output.status.code(), Some(78), "{id}: {stderr}");
        let run = defectflow(&["run", "--config", config.to_str().expect("utf-8")]);
        assert_eq!(run.status.code(), Some(78), "{id}: {}", String::from_utf8_lossy(&run.stderr));
    }
}

/// Credentials come from the environment or a file; `check-config` and the logs show
/// where, never the value; a credential written into the config fails it, naming it.
#[test]
fn secrets_are_read_from_the_environment_or_a_file_and_never_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("kafka-key-password");
    std::fs::write(&secret_file, "file-secret-5d1c\n").expect("secret file");
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
    let base = format!(
        "[anomaly]\ncommission_s = 0\n[model]\n[plant]\nreference = \"{}\"\n[kafka]\nbrokers = \"127.0.0.1:1\"\n\
         [kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"defectflow\"\n",
        reference.display()
    );
    let secrets = format!(
        "[kafka.secrets_from_env]\n\"sasl.password\" = \"DEFECTFLOW_TEST_KAFKA_PASSWORD\"\n\
         [kafka.secrets_from_file]\n\"ssl.key.password\" = \"{}\"\n",
        secret_file.display()
    );
    let camera = support::camera_toml("cam-1", "synth://belt?seed=1&fps=15", "");
    let config = dir.path().join("secrets.toml");
    std::fs::write(&config, format!("{base}{secrets}{camera}")).expect("config");
    let check = |env: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_defectflow"));
        command.args(["check-config", config.to_str().expect("utf-8")]);
        match env {
            Some(value) => command.env("DEFECTFLOW_TEST_KAFKA_PASSWORD", value),
            None => command.env_remove("DEFECTFLOW_TEST_KAFKA_PASSWORD"),
        };
        command.output().expect("check-config")
    };
    let output = check(Some("env-secret-91f4"));
    let shown = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains("kafka security.protocol = SASL_SSL"), "{shown}");
    assert!(
        shown.contains("kafka sasl.password = <secret from environment variable DEFECTFLOW_TEST_KAFKA_PASSWORD>"),
        "{shown}"
    );
    assert!(shown.contains("kafka ssl.key.password = <secret from file"), "{shown}");
    assert!(!shown.contains("env-secret-91f4") && !shown.contains("file-secret-5d1c"), "{shown}");

    // The variable missing: the field is named, still no value.
    let output = check(None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("kafka.secrets_from_env.\"sasl.password\"") && stderr.contains("not set"), "{stderr}");

    // A password in the file's properties is refused, naming it, not echoing it.
    std::fs::write(&config, format!("{base}\"sasl.password\" = \"inline-secret-77aa\"\n{camera}")).expect("config");
    let output = check(Some("x"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("kafka.properties.\"sasl.password\""), "{stderr}");
    assert!(!stderr.contains("inline-secret-77aa"), "{stderr}");
}

/// The librdkafka security settings reach librdkafka: a run told to use SSL with a CA
/// file that does not exist fails at start, and librdkafka's own error names the file.
#[test]
fn kafka_security_settings_reach_librdkafka() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
    let missing = dir.path().join("no-such-ca.pem");
    let config = dir.path().join("ssl.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\nduration_s = 5\n[anomaly]\ncommission_s = 0\n[model]\n[plant]\nreference = \"{}\"\n[kafka]\nbrokers = \"127.0.0.1:{}\"\n\
             [kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"\n\
             [kafka.secrets_from_env]\n\"ssl.key.password\" = \"DEFECTFLOW_TEST_KEY_PASSWORD\"\n{}",
            reference.display(),
            support::free_port(),
            missing.display(),
            support::camera_toml("cam-1", "synth://belt?seed=1&fps=15", "")
        ),
    )
    .expect("config");
    let (output, shown) = run_with_secret(&config, "DEFECTFLOW_TEST_KEY_PASSWORD", "key-secret-3e9b");
    assert!(!output.status.success(), "{shown}");
    assert!(shown.contains("ssl.ca.location") || shown.contains("no-such-ca.pem"), "{shown}");
    assert!(!shown.contains("key-secret-3e9b"), "{shown}");
}

/// SASL/SCRAM against a broker that requires it: tansu with `--authentication` runs
/// the SCRAM exchange with defectflow's librdkafka and refuses a user it does not know
/// (creating one needs an authenticated client, so none can be made here); the start
/// fails, and the password is shown nowhere.
#[test]
fn sasl_scram_is_spoken_with_the_broker_and_the_password_never_shown() {
    let _serial = crate::support::kafka::serial();
    let tansu = std::env::var("DEFECTFLOW_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/defectflow/bin/tansu"));
    // defectflow reaches the broker through a proxy that keeps what it sent.
    let (port, proxy_port) = (support::free_port(), support::free_port());
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{proxy_port}");
    let mut broker = Command::new(&tansu)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
        .args(["--storage-engine", "memory://tansu/", "--authentication"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tansu");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "tansu did not listen on {port}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let proxy = crate::proxy::Proxy::start(proxy_port, port);
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
    let config = dir.path().join("sasl.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\nduration_s = 5\n[anomaly]\ncommission_s = 0\n[model]\n[plant]\nreference = \"{}\"\n[kafka]\nbrokers = \"127.0.0.1:{proxy_port}\"\n\
             [kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
             \"sasl.username\" = \"defectflow\"\n\
             [kafka.secrets_from_env]\n\"sasl.password\" = \"DEFECTFLOW_TEST_SASL_PASSWORD\"\n{}",
            reference.display(),
            support::camera_toml("cam-1", "synth://belt?seed=1&fps=15", "")
        ),
    )
    .expect("config");
    // The SCRAM exchange is spoken when its client-first message (RFC 5802: no channel
    // binding, the user name, a nonce) goes to the broker. On a loaded machine the
    // connection may time out before the exchange even starts: the start is tried
    // again then.
    let spoken = |sent: &[u8], needle: &[u8]| sent.windows(needle.len()).any(|w| w == needle);
    let mut attempts = 0;
    let (output, shown) = loop {
        attempts += 1;
        let (output, shown) = run_with_secret(&config, "DEFECTFLOW_TEST_SASL_PASSWORD", "sasl-secret-c41d");
        if spoken(&proxy.sent_by_clients(), b"n,,n=defectflow,r=") || attempts == 3 {
            break (output, shown);
        }
        eprintln!("attempt {attempts}: the connection timed out before the SCRAM exchange; again");
    };
    let _ = broker.kill();
    let _ = broker.wait();
    assert!(!output.status.success(), "{shown}");
    let sent = proxy.sent_by_clients();
    assert!(spoken(&sent, b"n,,n=defectflow,r="), "no SCRAM client-first message in {} bytes: {shown}", sent.len());
    // SCRAM sends a proof, never the password; nor does any output show it.
    assert!(!spoken(&sent, b"sasl-secret-c41d"), "the password went over the wire");
    assert!(!shown.contains("sasl-secret-c41d"), "{shown}");
}

/// `defectflow run` of `config` to its end with the secret `value` in environment
/// variable `variable`; its output, and its stdout and stderr together.
fn run_with_secret(config: &Path, variable: &str, value: &str) -> (std::process::Output, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["run", "--config", config.to_str().expect("utf-8")])
        .env(variable, value)
        .output()
        .expect("run");
    let shown = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output, shown)
}
