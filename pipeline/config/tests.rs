//! The config's checks: defaults, and every field at fault named.

use super::*;

fn field_of(text: &str) -> String {
    match RunConfig::parse(text, "t.toml") {
        Err(ConfigError::Invalid { field, .. }) => field,
        Err(other) => other.to_string(),
        Ok(_) => "accepted".into(),
    }
}

#[test]
fn a_minimal_config_gets_defaults() {
    let config = RunConfig::parse("[[cameras]]\nid = \"c1\"\nurl = \"file:///tmp/a.mp4\"\n", "t").expect("valid");
    assert_eq!(config.runtime.workers, 1);
    assert_eq!(config.cameras[0].width, 640);
    assert!(matches!(config.cameras[0].source_url(), Ok(SourceUrl::File(_))));
}

#[test]
fn the_metrics_endpoint_binds_loopback_unless_told() {
    let camera = "[[cameras]]\nid = \"c1\"\nurl = \"file:///tmp/a.mp4\"\n";
    let config = RunConfig::parse(&format!("[metrics]\n{camera}"), "t").expect("valid");
    assert_eq!(config.metrics.map(|m| m.address), Some("127.0.0.1:9464".to_owned()));
    let config = RunConfig::parse(&format!("[metrics]\naddress = \"0.0.0.0:9100\"\n{camera}"), "t").expect("valid");
    assert_eq!(config.metrics.map(|m| m.address), Some("0.0.0.0:9100".to_owned()));
    assert_eq!(field_of(&format!("[metrics]\naddress = \"localhost\"\n{camera}")), "metrics.address");
}

#[test]
fn unknown_fields_are_named() {
    let err = RunConfig::parse("[[cameras]]\nid = \"c1\"\nurl = \"file:///a.mp4\"\nfps_max = 3\n", "t")
        .expect_err("unknown field");
    assert!(err.to_string().contains("fps_max"), "{err}");
}

#[test]
fn semantic_errors_name_the_field() {
    let two = "[[cameras]]\nid = \"c1\"\nurl = \"file:///a.mp4\"\n[[cameras]]\nid = \"c1\"\nurl = \"file:///b.mp4\"\n";
    assert_eq!(field_of(two), "cameras[1].id");
    let camera = "[[cameras]]\nid = \"c1\"\nurl = \"file:///a.mp4\"\n";
    assert_eq!(field_of(&format!("[anomaly]\ncommission_s = -1\n{camera}")), "anomaly.commission_s");
    assert_eq!(field_of(&format!("[anomaly]\nfit_share = 1.5\n{camera}")), "anomaly.fit_share");
    assert_eq!(field_of(&format!("[anomaly]\nmin_threshold = 0.5\n{camera}")), "anomaly.min_threshold");
    assert_eq!(field_of("[[cameras]]\nid = \"c1\"\nurl = \"http://x/a.mp4\"\n"), "cameras[0].url");
    assert_eq!(field_of("[[cameras]]\nid = \"c1\"\nurl = \"file:///a.mp4\"\nmax_fps = 0\n"), "cameras[0].max_fps");
    assert_eq!(field_of("[[cameras]]\nid = \"c 1\"\nurl = \"file:///a.mp4\"\n"), "cameras[0].id");
    assert_eq!(field_of("[runtime]\nworkers = 0\n[[cameras]]\nid = \"c\"\nurl = \"file:///a\"\n"), "runtime.workers");
    assert_eq!(field_of("[[cameras]]\nid = \"c1\"\nurl = \"rtsp://admin:hunter2@10.0.0.5/s\"\n"), "cameras[0].url");
    let untrusted = format!("[anomaly]\nunknown = \"off\"\n{camera}name_defects = false\n");
    assert_eq!(field_of(&untrusted), "cameras[0].name_defects");
}

/// Every check of `validate`, each with a config wrong in that one field only, and
/// the field path the error must name.
#[test]
fn every_validated_field_is_named_when_it_is_wrong() {
    let camera = "[[cameras]]\nid = \"c1\"\nurl = \"file:///a.mp4\"\n";
    let kafka = "[model]\n[plant]\nreference = \"ref\"\n[kafka]\nbrokers = \"127.0.0.1:9092\"\n";
    let tables: &[(&str, &str)] = &[
        ("[runtime]\nworkers = 0\n", "runtime.workers"),
        ("[runtime]\nduration_s = -1.0\n", "runtime.duration_s"),
        ("[runtime]\nstop_timeout_s = 0.0\n", "runtime.stop_timeout_s"),
        ("[model]\nbatch_size = 0\n", "model.batch_size"),
        ("[model]\nmin_confidence = 1.5\n", "model.min_confidence"),
        ("[anomaly]\ncommission_s = 4000.0\n", "anomaly.commission_s"),
        ("[anomaly]\nfollow_s = 10.0\n", "anomaly.follow_s"),
        ("[anomaly]\nexclude_confidence = 1.0\n", "anomaly.exclude_confidence"),
        ("[anomaly]\ndisturbed_fraction = 0.0\n", "anomaly.disturbed_fraction"),
        ("[anomaly]\nfit_share = 1.5\n", "anomaly.fit_share"),
        ("[anomaly]\nexclude_uniqueness = -1.0\n", "anomaly.exclude_uniqueness"),
        ("[anomaly]\nthreshold_margin = 0.5\n", "anomaly.threshold_margin"),
        ("[anomaly]\nname_defects = false\nunknown = \"off\"\n", "anomaly.name_defects"),
        ("[anomaly]\nmin_threshold = 0.5\n", "anomaly.min_threshold"),
        ("[plant]\ncmms_script = \"events.toml\"\n", "plant.cmms_script"),
        ("[plant]\nreference = \"ref\"\n", "plant.reference"),
        ("[plant]\ntime_zone = \"Europe/Olso\"\n", "plant.time_zone"),
        (
            "[plant]\ntime_zone = \"Europe/Oslo\"\n[work_orders]\nutc_offset_minutes = 60\n",
            "work_orders.utc_offset_minutes",
        ),
        ("[work_orders.due_hours]\nP2 = -4.0\n", "work_orders.due_hours.P2"),
        ("[output]\naudit_commit_rows = 0\n", "output.audit_commit_rows"),
        ("[output]\naudit_commit_s = 0.0\n", "output.audit_commit_s"),
        ("[metrics]\naddress = \"localhost\"\n", "metrics.address"),
        ("[model]\n[kafka]\nbrokers = \"127.0.0.1:9092\"\n", "kafka"),
    ];
    let kafka_fields: &[(&str, &str)] = &[
        ("[kafka.topics]\nwork_orders = \"work orders\"\n", "kafka.topics.work_orders"),
        ("[kafka.topics]\nalerts = \"\"\n", "kafka.topics.alerts"),
        ("[kafka.topics]\nparts_staging = \"a/b\"\n", "kafka.topics.parts_staging"),
        ("[kafka.topics]\ndead_letter = \"dead letter\"\n", "kafka.topics.dead_letter"),
        ("[kafka.topics]\nprogress = \"p!\"\n", "kafka.topics.progress"),
        ("[kafka.inputs]\nwo_events = \"\"\n", "kafka.inputs.wo_events"),
        ("[kafka.inputs]\ninventory = \"a b\"\n", "kafka.inputs.inventory"),
        ("[kafka.inputs]\ntechnicians = \"a:b\"\n", "kafka.inputs.technicians"),
        ("[kafka.inputs]\nassets = \"\"\n", "kafka.inputs.assets"),
        ("[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n", "kafka.properties.\"sasl.password\""),
        (
            "[kafka.secrets_from_env]\n\"sasl.password\" = \"DEFECTFLOW_NO_SUCH_VARIABLE_7f3a\"\n",
            "kafka.secrets_from_env.\"sasl.password\"",
        ),
        (
            "[kafka.secrets_from_file]\n\"ssl.key.password\" = \"/no/such/secret\"\n",
            "kafka.secrets_from_file.\"ssl.key.password\"",
        ),
    ];
    let camera_fields: &[(&str, &str)] = &[
        ("id = \"c 1\"\nurl = \"file:///a.mp4\"\n", "cameras[0].id"),
        ("id = \".c1\"\nurl = \"file:///a.mp4\"\n", "cameras[0].id"),
        ("id = \"c1\"\nurl = \"http://x/a.mp4\"\n", "cameras[0].url"),
        ("id = \"c1\"\nurl = \"file:///a.mp4\"\nwidth = 15\n", "cameras[0].width"),
        ("id = \"c1\"\nurl = \"file:///a.mp4\"\nheight = 8\n", "cameras[0].width"),
        ("id = \"c1\"\nurl = \"file:///a.mp4\"\nmax_fps = 0.0\n", "cameras[0].max_fps"),
        ("id = \"c1\"\nurl = \"file:///a.mp4\"\nqueue_frames = 0\n", "cameras[0].queue_frames"),
        ("id = \"c1\"\nurl = \"rtsp://10.0.0.5/s\"\nstart_ms = 1\n", "cameras[0].start_ms"),
        (
            "id = \"c1\"\nurl = \"rtsp://10.0.0.5/s\"\n[cameras.credentials]\nusername_env = \"CAM-USER\"\npassword_env = \"CAM_PASSWORD\"\n",
            "cameras[0].credentials.username_env",
        ),
        (
            "id = \"c1\"\nurl = \"rtsp://10.0.0.5/s\"\n[cameras.credentials]\nusername_env = \"CAM_USER\"\npassword_env = \"\"\n",
            "cameras[0].credentials.password_env",
        ),
        (
            "id = \"c1\"\nurl = \"file:///a.mp4\"\n[cameras.reconnect]\ninitial_backoff_ms = 0\n",
            "cameras[0].reconnect.max_backoff_ms",
        ),
        (
            "id = \"c1\"\nurl = \"file:///a.mp4\"\n[cameras.reconnect]\ninitial_backoff_ms = 5000\nmax_backoff_ms = 1000\n",
            "cameras[0].reconnect.max_backoff_ms",
        ),
        (
            "id = \"c1\"\nurl = \"file:///a.mp4\"\n[cameras.reconnect]\nstall_timeout_ms = 50\n",
            "cameras[0].reconnect.stall_timeout_ms",
        ),
    ];
    let mut cases: Vec<(String, &str)> =
        tables.iter().map(|(table, field)| (format!("{table}{camera}"), *field)).collect();
    cases.extend(kafka_fields.iter().map(|(extra, field)| (format!("{kafka}{extra}{camera}"), *field)));
    cases.extend(camera_fields.iter().map(|(body, field)| (format!("[[cameras]]\n{body}"), *field)));
    cases.push((format!("[model]\n[plant]\nreference = \"ref\"\n[kafka]\nbrokers = \" \"\n{camera}"), "kafka.brokers"));
    cases.push(("cameras = []\n".into(), "cameras"));
    cases.push((format!("{camera}{camera}"), "cameras[1].id"));
    for (text, field) in &cases {
        let config = RunConfig::parse(text, "t.toml");
        let Err(ConfigError::Invalid { field: named, message, .. }) = config else {
            panic!("{field}: not refused as invalid: {config:?}\n{text}");
        };
        assert_eq!(&named, field, "{message}\n{text}");
        assert!(!message.is_empty(), "{field}");
    }
    // The base configs are valid: each case fails for its one field.
    RunConfig::parse(camera, "t.toml").expect("the camera alone is valid");
    RunConfig::parse(&format!("{kafka}{camera}"), "t.toml").expect("kafka with a plant is valid");
}

#[test]
fn the_bridge_table_rides_in_the_run_config_and_is_checked() {
    let camera = "[[cameras]]\nid = \"c1\"\nurl = \"file:///tmp/a.mp4\"\n";
    let cmms = "[cmms]\nmapping = \"maximo\"\nurl = \"https://maximo.example.com\"\nsecret_from_env = \"DEFECTFLOW_NO_SUCH_SECRET\"\n";
    // Without [kafka] the bridge has nothing to read.
    assert_eq!(field_of(&format!("{cmms}{camera}")), "cmms");
    let bad = cmms.replace("https://maximo.example.com", "maximo.example.com");
    assert_eq!(field_of(&format!("{bad}{camera}")), "cmms.url");
    // The bridge's credential is the bridge's business: the run starts without it, and
    // check-config names it.
    let text = format!("[kafka]\nbrokers = \"127.0.0.1:9092\"\n{cmms}{camera}");
    let config = RunConfig::parse_unchecked(&text, "dir/t.toml").expect("parses");
    let problems = config.problems();
    assert_eq!(problems.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), vec!["kafka"], "{problems:?}");
    let environment = config.environment_problems();
    assert!(environment.iter().any(|(f, m)| f == "cmms.secret_from_env" && m.contains("DEFECTFLOW_NO_SUCH_SECRET")));
    assert_eq!(config.cmms.map(|c| c.state_dir), Some(PathBuf::from("dir/bridge-state")));
}
