//! The deployment files in `deploy/` parse, agree with each other, and use
//! only metric names that a node really exposes. (No container engine runs
//! here: this is what can be checked without one.)

use crate::harness::*;
use cluebridge::config::NodeFile;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::Path;

const NODE_IDS: [&str; 4] = [DISCIPLINE, PERSONNEL, SECURITY, JUDICIAL];

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// Every `cluebridge_*` name in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("cluebridge_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The PromQL expressions of the dashboard and the alert rules.
fn expressions() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/cluebridge.json"))
            .expect("dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() >= 10, "the dashboard has its panels");
    let alerts = yaml("deploy/prometheus/alerts.yml");
    for group in alerts["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("alert expr").to_string());
        }
    }
    exprs
}

#[test]
fn compose_prometheus_and_grafana_files_agree() {
    let mut compose = yaml("deploy/compose.yaml");
    // `<<: *node` merges the shared settings, as compose does.
    compose.apply_merge().expect("merge keys");
    let services = compose["services"].as_mapping().expect("services");
    for id in NODE_IDS {
        let service = &services[id];
        let command: Vec<&str> = service["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("service {id} has a command"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            command,
            ["serve", "--config", &format!("/etc/cluebridge/{id}.toml")]
        );
        // The shared settings (non-root image, grace period) reach every node.
        assert_eq!(service["stop_grace_period"].as_str(), Some("30s"), "{id}");
    }
    assert!(services.contains_key("prometheus") && services.contains_key("grafana"));

    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let targets: BTreeSet<&str> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .expect("targets")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let wanted: BTreeSet<String> = NODE_IDS.iter().map(|n| format!("{n}:9464")).collect();
    assert_eq!(
        targets,
        wanted.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    for path in [
        "deploy/grafana/provisioning/datasources/prometheus.yaml",
        "deploy/grafana/provisioning/dashboards/cluebridge.yaml",
    ] {
        assert_eq!(yaml(path)["apiVersion"].as_u64(), Some(1), "{path}");
    }
}

#[test]
fn kubernetes_example_parses_and_holds_a_valid_node_file() {
    let text = read("deploy/k8s/discipline.yaml");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ConfigMap", "Service", "StatefulSet"]);
    let node_file = docs[0]["data"]["discipline.toml"]
        .as_str()
        .expect("node file in the ConfigMap");
    let node: NodeFile = toml::from_str(node_file).expect("the node file parses");
    assert_eq!(node.node_id, DISCIPLINE);
    assert_eq!(node.metrics_listen.as_deref(), Some("0.0.0.0:9464"));
    let set = &docs[2]["spec"];
    assert_eq!(set["replicas"].as_u64(), Some(1));
    assert!(set["volumeClaimTemplates"].as_sequence().is_some());
    let grace = set["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    assert!(grace * 1000 > node.delivery.shutdown_grace_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_exposed_metrics() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    let text = fed.metrics(DISCIPLINE).await;
    let mut exposed = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (name, kind) = (parts.next().expect("name"), parts.next().expect("kind"));
        exposed.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                exposed.insert(format!("{name}{suffix}"));
            }
        }
    }
    let used: BTreeSet<String> = expressions().iter().flat_map(|e| metric_names(e)).collect();
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<&String> = used.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or alerts but not exposed: {missing:?}"
    );
}
