//! The broker away for 30 s, and the broker slow: nothing lost, nothing twice; not ready
//! (`/readyz`) while the broker is away.

use std::time::{Duration, Instant};

use crate::checks;
use crate::proxy::Proxy;
use crate::support::{self, kafka::*, outputs::*};

/// A plant whose broker is reached through a [`Proxy`], with metrics on a free port.
fn plant_behind_proxy() -> (Plant, Proxy, u16) {
    let proxy_port = support::free_port();
    let broker = Broker::behind(Some(proxy_port));
    let proxy = Proxy::start(proxy_port, broker.port);
    let plant = plant_on(broker, "");
    let metrics = support::free_port();
    let text = std::fs::read_to_string(&plant.config).expect("config");
    let text = text.replacen("[[cameras]]", &format!("[metrics]\naddress = \"127.0.0.1:{metrics}\"\n[[cameras]]"), 1);
    std::fs::write(&plant.config, text).expect("config");
    (plant, proxy, metrics)
}

/// Checks the run's topic and audit log against the footage, that a replay after it
/// sends nothing, and that every topic, the file and every audit table hold what a run
/// without the fault writes from the same recording.
fn check_delivered_once(plant: &Plant, out: &std::path::Path) {
    let messages = plant.broker.messages("defectflow.work-orders");
    check_exactly_once(&messages, out, &plant.truth);
    let keys = checks::one_work_order_per_defect(&work_orders(&messages), &checks::defects(&plant.truth));
    checks::audited_once(&out.join("audit"), &keys);
    assert!(run_to_end(&plant.config, None).contains("kafka: 0 sent"), "a replay sends nothing again");
    let faulty = run_outputs(&plant.broker, "defectflow.", out);
    same_as_uncrashed(&faulty, &uncrashed_run(&plant.broker, plant.dir.path(), &plant.config));
}

/// The broker goes away (every connection cut, new ones refused, as when its process is
/// killed) for 30 s once the first revisions are out, then comes back with its log.
#[test]
fn the_broker_gone_for_30_s_loses_and_duplicates_nothing() {
    let (plant, proxy, metrics) = plant_behind_proxy();
    // The run stays up after its footage, to be seen healthy once the broker is back.
    let text = std::fs::read_to_string(&plant.config).expect("config");
    std::fs::write(&plant.config, text.replacen("[runtime]\n", "[runtime]\nduration_s = 55\n", 1)).expect("config");
    let out = plant.dir.path().join("out");
    let mut run = crate::support::Drained::spawn(&mut defectflow(&plant.config, Some(&out), None));
    assert!(wait_for_first_delivery(metrics, &mut run), "no revision reached the topic");
    let ready = || http_get(metrics, "/readyz").map(|(status, body)| format!("{status} {body}"));
    assert!(ready().is_some_and(|r| r.starts_with("HTTP/1.1 200")), "ready once delivering: {:?}", ready());
    proxy.down();
    let gone = Instant::now();
    let (mut stalled, mut not_ready) = (false, None);
    while gone.elapsed() < Duration::from_secs(30) {
        let shown = http_get(metrics, "/metrics").and_then(|(_, body)| sample(&body, "defectflow_output_stalled"));
        stalled |= shown == Some(1.0);
        not_ready = not_ready.or(ready().filter(|r| r.starts_with("HTTP/1.1 503")));
        std::thread::sleep(Duration::from_millis(500));
    }
    proxy.up();
    assert!(stalled, "the metrics never showed the output stalled while the broker was gone");
    let not_ready = not_ready.expect("/readyz never answered 503 while the broker was gone");
    assert!(not_ready.contains("stalled"), "{not_ready}");
    // Healthy again once the broker is back: deliveries go through, the stall clears.
    let back = Instant::now();
    loop {
        let body = http_get(metrics, "/metrics").map(|(_, body)| body);
        let health = http_get(metrics, "/healthz").map(|(status, _)| status);
        let stalled = body.as_deref().and_then(|b| sample(b, "defectflow_output_stalled"));
        let ready = ready().is_some_and(|r| r.starts_with("HTTP/1.1 200"));
        if stalled == Some(0.0) && health.as_deref() == Some("HTTP/1.1 200 OK") && ready {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "not healthy after the broker came back: {body:?} {health:?}"
        );
        assert!(run.try_wait().expect("wait").is_none(), "the run ended before it was healthy again");
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = run.wait_with_output();
    assert!(output.status.success(), "run failed: {}", String::from_utf8_lossy(&output.stderr));
    check_delivered_once(&plant, &out);
}

/// Every request and answer between defectflow and the broker waits 150 ms each way.
#[test]
fn a_slow_broker_loses_and_duplicates_nothing() {
    let (plant, proxy, _) = plant_behind_proxy();
    proxy.delay(Duration::from_millis(150));
    let out = plant.dir.path().join("out");
    let stdout = run_to_end(&plant.config, Some(&out));
    proxy.delay(Duration::ZERO);
    assert_eq!(sent_to_kafka(&stdout), plant.broker.output_messages(), "{stdout}");
    check_delivered_once(&plant, &out);
}
