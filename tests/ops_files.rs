//! The operations files: `conf/alerts.yml`, `conf/grafana-dashboard.json`,
//! `conf/k8s-hpa.yaml`, `conf/k8s-keda.yaml` and `systemd/levee.service`. Every metric
//! and label they query exists in a real levee's `/metrics`; promtool accepts the rules
//! and the autoscalers' queries, and the rules fire when they should; the dashboard is
//! well formed; the HPA and the ScaledObject match their schemas (the parts of the
//! Kubernetes autoscaling/v2 and KEDA keda.sh/v1alpha1 OpenAPI schemas they use); the
//! unit is hardened and systemd accepts it.
//!
//! promtool and systemd-analyze are optional: without them those checks print
//! `skipped: ...` and the textual checks still run.

// The schemas below are nested json! literals.
#![recursion_limit = "256"]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde::Deserialize;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(10);

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs `program args`; `None` when the program is not installed.
fn run(program: &str, args: &[&str], dir: Option<&Path>) -> Option<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    match cmd.output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{program}: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------
// Scanning PromQL and the exposition format, without a regex engine.
// ---------------------------------------------------------------------------------

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Identifiers starting with `levee_`, each with its byte position in `s`.
fn levee_idents(s: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(off) = s[i..].find("levee_") {
        let start = i + off;
        let boundary = s[..start].chars().next_back().is_none_or(|c| !is_ident(c));
        let end = s[start..]
            .find(|c: char| !is_ident(c))
            .map_or(s.len(), |n| start + n);
        if boundary {
            // A colon may be part of a name, but not its last character ("levee_x: ...").
            found.push((start, s[start..end].trim_end_matches(':').to_string()));
        }
        i = end;
    }
    found
}

fn levee_names(s: &str) -> BTreeSet<String> {
    levee_idents(s).into_iter().map(|(_, n)| n).collect()
}

/// Label names of the matchers in a `{...}` that starts at `s[0]`, honouring quotes.
fn matcher_labels(s: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut name = String::new();
    let mut in_quote = false;
    let mut escaped = false;
    let mut expect_name = true;
    for c in s.chars().skip(1) {
        if in_quote {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_quote = false,
                _ => {}
            }
            continue;
        }
        match c {
            '}' => break,
            '"' => in_quote = true,
            ',' => expect_name = true,
            c if expect_name && is_ident(c) => name.push(c),
            _ => {
                if expect_name && !name.is_empty() {
                    labels.push(std::mem::take(&mut name));
                    expect_name = false;
                }
            }
        }
    }
    labels
}

/// Label names of every `by (...)` and `without (...)` clause of `expr`.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    for keyword in ["by", "without"] {
        let mut i = 0;
        while let Some(off) = expr[i..].find(keyword) {
            let start = i + off;
            i = start + keyword.len();
            let before = expr[..start].chars().next_back();
            if before.is_some_and(is_ident) {
                continue;
            }
            let rest = expr[i..].trim_start();
            if !rest.starts_with('(') {
                continue;
            }
            let close = rest.find(')').expect("grouping clause closed");
            labels.extend(
                rest[1..close]
                    .split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    labels
}

const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// What a levee `/metrics` page holds: each family's type and label names, and every
/// sample.
struct Scrape {
    families: BTreeMap<String, (String, BTreeSet<String>)>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(body: &str) -> Scrape {
        let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
        let mut samples = Vec::new();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let name = parts.next().expect("TYPE name").to_string();
                let kind = parts.next().expect("TYPE kind").to_string();
                families.insert(name, (kind, BTreeSet::new()));
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).expect("sample line");
            let name = line[..name_end].to_string();
            let mut labels = BTreeMap::new();
            let value_part = if line[name_end..].starts_with('{') {
                let body = &line[name_end + 1..];
                let mut rest = body;
                loop {
                    rest = rest.trim_start_matches(',');
                    if let Some(after) = rest.strip_prefix('}') {
                        break after;
                    }
                    let eq = rest.find("=\"").expect("label=\"value\"");
                    let key = rest[..eq].to_string();
                    let mut value = String::new();
                    let mut chars = rest[eq + 2..].char_indices();
                    let end = loop {
                        match chars.next().expect("closing quote") {
                            (_, '\\') => {
                                let (_, c) = chars.next().expect("escaped char");
                                value.push(if c == 'n' { '\n' } else { c });
                            }
                            (j, '"') => break eq + 2 + j + 1,
                            (_, c) => value.push(c),
                        }
                    };
                    labels.insert(key, value);
                    rest = &rest[end..];
                }
            } else {
                &line[name_end..]
            };
            let value: f64 = value_part
                .split_whitespace()
                .next()
                .expect("sample value")
                .parse()
                .unwrap_or_else(|e| panic!("sample value in {line:?}: {e}"));
            samples.push((name, labels, value));
        }
        let mut scrape = Scrape { families, samples };
        for (name, labels, _) in &scrape.samples {
            let family = scrape
                .family_of_series(name)
                .unwrap_or_else(|| panic!("sample {name} has no # TYPE"));
            let entry = scrape.families.get_mut(&family).expect("family");
            entry.1.extend(labels.keys().cloned());
        }
        scrape
    }

    /// The family a series name belongs to: itself, or a histogram's `_bucket`,
    /// `_sum` or `_count`. A bare histogram name is no series.
    fn family_of_series(&self, name: &str) -> Option<String> {
        if let Some((kind, _)) = self.families.get(name) {
            return (kind != "histogram").then(|| name.to_string());
        }
        HISTOGRAM_SUFFIXES.iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            let (kind, _) = self.families.get(base)?;
            (kind == "histogram").then(|| base.to_string())
        })
    }

    /// A name mentioned in prose: a series name or a family name.
    fn knows(&self, name: &str) -> bool {
        self.families.contains_key(name) || self.family_of_series(name).is_some()
    }

    fn labels(&self, family: &str) -> &BTreeSet<String> {
        &self.families[family].1
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Problems with one PromQL expression: series that levee does not export,
    /// matchers on labels the series lacks, groupings by labels none of its series has.
    /// `job` and `instance` come from Prometheus' scrape.
    fn check_expr(&self, what: &str, expr: &str) -> Vec<String> {
        let target_labels = ["job", "instance"];
        let mut problems = Vec::new();
        let mut available: BTreeSet<String> = target_labels.iter().map(|s| s.to_string()).collect();
        for (pos, name) in levee_idents(expr) {
            let Some(family) = self.family_of_series(&name) else {
                problems.push(format!("{what}: no series {name} in levee's /metrics"));
                continue;
            };
            let labels = self.labels(&family);
            available.extend(labels.iter().cloned());
            let after = &expr[pos + name.len()..];
            if after.starts_with('{') {
                for label in matcher_labels(after) {
                    if !labels.contains(&label) && !target_labels.contains(&label.as_str()) {
                        problems.push(format!("{what}: {name} has no label {label}"));
                    }
                }
            }
        }
        for label in grouping_labels(expr) {
            if !available.contains(&label) {
                problems.push(format!(
                    "{what}: groups by {label}, which none of its series has"
                ));
            }
        }
        problems
    }
}

// ---------------------------------------------------------------------------------
// Reading our own files.
// ---------------------------------------------------------------------------------

/// One alerting rule of `conf/alerts.yml`, read textually: `- alert:` opens a rule,
/// and its `key: value` lines follow, one per line (expressions stay on one line).
#[derive(Debug, Default)]
struct Rule {
    alert: String,
    fields: BTreeMap<String, String>,
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        v[1..v.len() - 1].replace("\\\"", "\"")
    } else if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        v[1..v.len() - 1].replace("''", "'")
    } else {
        v.to_string()
    }
}

fn alert_rules(yaml: &str) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    for line in yaml.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            rules.push(Rule {
                alert: name.trim().to_string(),
                ..Rule::default()
            });
        } else if trimmed.starts_with("- name:") || trimmed.starts_with("- record:") {
            // A new group (or a recording rule) ends the current alert.
            rules.push(Rule::default());
        } else if let (Some(rule), Some((key, value))) = (rules.last_mut(), trimmed.split_once(':'))
        {
            if !rule.alert.is_empty() && !value.trim().is_empty() {
                let previous = rule.fields.insert(key.to_string(), unquote(value));
                assert!(previous.is_none(), "{}: {key} twice", rule.alert);
            }
        }
    }
    rules.retain(|r| !r.alert.is_empty());
    rules
}

/// Every string in a JSON document, with the key it is under.
fn json_strings<'a>(v: &'a Value, key: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((key.to_string(), s)),
        Value::Array(items) => items.iter().for_each(|i| json_strings(i, key, out)),
        Value::Object(map) => map.iter().for_each(|(k, v)| json_strings(v, k, out)),
        _ => {}
    }
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        all.push(p);
        if let Some(nested) = p["panels"].as_array() {
            all.extend(nested.iter());
        }
    }
    all
}

/// The PromQL of the dashboard: panel targets and annotation queries.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            let expr = t["expr"].as_str().unwrap_or_default().to_string();
            exprs.push((format!("panel {title:?} target {}", t["refId"]), expr));
        }
    }
    for a in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = a["expr"].as_str() {
            exprs.push((format!("annotation {}", a["name"]), expr.to_string()));
        }
    }
    exprs
}

fn dashboard() -> Value {
    serde_json::from_str(&read("conf/grafana-dashboard.json"))
        .unwrap_or_else(|e| panic!("conf/grafana-dashboard.json: {e}"))
}

/// Grafana's variables replaced by values Prometheus accepts.
fn without_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
        .replace("$upstream", ".*")
}

/// Directives of a unit file: key to values in order, comments and sections left out.
fn unit_directives(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a directive: {line}"));
        map.entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    map
}

// ---------------------------------------------------------------------------------
// (a) Names against a real levee.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_in_alerts_and_dashboard_is_exported() {
    let r = replica("r1", "a", 2, 0).await;
    // With TLS, for the series that exist only with certificates loaded.
    // (Backend names are looked up through a loopback port nobody answers on.)
    let tls = format!(
        "[server.dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_ms = 100\n[server.tls]\nlisten = [\"127.0.0.1:0\"]\ncert = \"{}\"\nkey = \"{}\"",
        repo_path("conf/tls/example.pem").display(),
        repo_path("conf/tls/example.key").display()
    );
    // And a backend given by name, for the DNS discovery series.
    let levee = Setup::new(&[&r])
        .server(&tls)
        .upstream("[upstream.limits]\nmax_inflight = 1\nqueue_depth = 1\nqueue_timeout_ms = 5000")
        .tail("[[upstream]]\nname = \"named\"\nroutes = [\"/named/\"]\n[[upstream.backend]]\naddress = \"localhost:1\"")
        .start()
        .await;
    let addr = levee.addr();

    // Two plain requests, then one slot held, one request queued, and one shed.
    // The slot is released just after the response is written, so each request
    // waits for the previous one's release: none of these may queue.
    for _ in 0..2 {
        assert_eq!(fetch(addr, get("/x")).await.status, 200);
        eventually(LIMIT, "slot released", || all_idle(&levee)).await;
    }
    let up = levee.app.snapshot().upstreams[0].clone();
    // Held long enough for the queueing below even on a loaded machine.
    let holder = tokio::spawn(async move { fetch(addr, get("/hold?ms=3000")).await.status });
    eventually(LIMIT, "slot taken", || up.inflight() == 1).await;
    let waiter = tokio::spawn(async move { fetch(addr, get("/x")).await.status });
    eventually(LIMIT, "one queued", || up.queue.len() == 1).await;
    let shed = fetch(addr, get("/x")).await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.json()["reason"], "queue_full");
    assert_eq!(holder.await.unwrap(), 200);
    assert_eq!(waiter.await.unwrap(), 200);
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;

    // Scrape once the backend's first health probe has passed (a new backend with
    // active checks starts in probation).
    let admin = levee.admin_addr.expect("admin listener");
    let healthy = [("upstream", "app"), ("zone", "a")];
    let started = std::time::Instant::now();
    let (body, scrape) = loop {
        let reply = fetch(admin, get("/metrics")).await;
        assert_eq!(reply.status, 200);
        let body = text(&reply.body);
        let scrape = Scrape::parse(&body);
        if scrape.value("levee_backend_healthy", &healthy) == 1.0 {
            break (body, scrape);
        }
        assert!(started.elapsed() < LIMIT, "backend never healthy:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // The scrape carries what the panels and alerts need to show something.
    let app = [("upstream", "app")];
    assert_eq!(scrape.value("levee_requests_total", &app), 4.0, "{body}");
    assert_eq!(
        scrape.value(
            "levee_shed_total",
            &[
                ("upstream", "app"),
                ("reason", "queue_full"),
                ("priority", "normal")
            ]
        ),
        1.0,
        "{body}"
    );
    assert_eq!(
        scrape.value("levee_request_duration_seconds_count", &app),
        4.0
    );
    // Only the request that queued is in the queue-wait histogram.
    assert_eq!(scrape.value("levee_queue_wait_seconds_count", &app), 1.0);
    assert_eq!(scrape.value("levee_zone_healthy_backends", &healthy), 1.0);
    assert_eq!(
        scrape.value("levee_config_reloads_total", &[("result", "success")]),
        1.0
    );
    assert!(scrape.value("levee_config_last_reload_success_timestamp_seconds", &[]) > 1.6e9);
    assert!(scrape.value("levee_tls_cert_expiry_seconds", &[("name", "default")]) > 1.6e9);

    let mut problems = Vec::new();

    // Alerts: every expression's series and labels; every name in the prose too.
    let alerts = read("conf/alerts.yml");
    let rules = alert_rules(&alerts);
    assert!(rules.len() >= 10, "only {} alert rules read", rules.len());
    for rule in &rules {
        let expr = rule.fields.get("expr").expect("every rule has an expr");
        problems.extend(scrape.check_expr(&format!("alert {}", rule.alert), expr));
    }
    for name in levee_names(&alerts) {
        if !scrape.knows(&name) {
            problems.push(format!(
                "conf/alerts.yml mentions {name}, which levee does not export"
            ));
        }
    }

    // Dashboard: every query, and every levee name anywhere in it.
    let dash = dashboard();
    let exprs = dashboard_exprs(&dash);
    assert!(exprs.len() >= 15, "only {} dashboard queries", exprs.len());
    let upstream_labelled: BTreeSet<String> = scrape
        .families
        .iter()
        .filter(|(_, (_, labels))| labels.contains("upstream"))
        .map(|(name, _)| name.clone())
        .collect();
    for (what, expr) in &exprs {
        problems.extend(scrape.check_expr(what, expr));
        // The template variables filter every query they can apply to.
        let names: Vec<String> = levee_idents(expr)
            .into_iter()
            .filter_map(|(_, n)| scrape.family_of_series(&n))
            .collect();
        if !names.is_empty() && !expr.contains("instance=~\"$instance\"") {
            problems.push(format!("{what}: not filtered by $instance"));
        }
        if names.iter().any(|n| upstream_labelled.contains(n))
            && !expr.contains("upstream=~\"$upstream\"")
        {
            problems.push(format!("{what}: not filtered by $upstream"));
        }
    }
    let mut strings = Vec::new();
    json_strings(&dash, "", &mut strings);
    let mut on_dashboard = BTreeSet::new();
    for (_, s) in &strings {
        for name in levee_names(s) {
            if !scrape.knows(&name) {
                problems.push(format!(
                    "the dashboard mentions {name}, which levee does not export"
                ));
            }
            on_dashboard.extend(scrape.family_of_series(&name));
            if scrape.families.contains_key(&name) {
                on_dashboard.insert(name);
            }
        }
    }

    // The autoscaler examples: their queries, the HPA's metric and its selector.
    for (what, expr) in autoscaler_queries() {
        problems.extend(scrape.check_expr(&what, &expr));
    }
    let (metric, selector) = hpa_metric();
    match scrape.family_of_series(&metric) {
        None => problems.push(format!(
            "the HPA scales on {metric}, which levee does not export"
        )),
        Some(family) => {
            for label in selector {
                if !scrape.labels(&family).contains(&label) {
                    problems.push(format!(
                        "the HPA selects {metric} by {label}, which it lacks"
                    ));
                }
            }
        }
    }

    // And the other way round: each metric levee exports has a place on the dashboard.
    for family in scrape.families.keys() {
        if !on_dashboard.contains(family) {
            problems.push(format!(
                "levee exports {family}, which conf/grafana-dashboard.json does not show"
            ));
        }
    }

    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------
// (b) The alert rules.
// ---------------------------------------------------------------------------------

#[test]
fn alert_rules_have_four_tiers_and_the_labels_routing_needs() {
    let rules = alert_rules(&read("conf/alerts.yml"));
    let tier_of = |severity: &str| match severity {
        "info" => "yellow",
        "warning" => "red",
        "critical" => "emergency",
        "page" => "page",
        other => panic!("unknown severity {other}"),
    };
    let mut names = BTreeSet::new();
    let mut tiers = BTreeSet::new();
    for rule in &rules {
        let f = |k: &str| {
            rule.fields
                .get(k)
                .unwrap_or_else(|| panic!("{}: no {k}", rule.alert))
                .as_str()
        };
        assert!(names.insert(rule.alert.clone()), "{} twice", rule.alert);
        assert!(rule.alert.starts_with("Levee"), "{}", rule.alert);
        assert_eq!(tier_of(f("severity")), f("tier"), "{}", rule.alert);
        tiers.insert(f("tier").to_string());
        for k in ["summary", "description", "runbook"] {
            assert!(f(k).len() > 20, "{}: {k} too short", rule.alert);
        }
        assert!(
            !levee_names(f("runbook")).is_empty() || f("expr").contains("up{"),
            "{}: the runbook names no metric to look at",
            rule.alert
        );
        assert!(!f("expr").is_empty());
    }
    assert_eq!(
        tiers,
        ["emergency", "page", "red", "yellow"]
            .map(String::from)
            .into(),
        "the four tiers"
    );
    for required in [
        "LeveeUpstreamCaution",
        "LeveeUpstreamDanger",
        "LeveeUpstreamCritical",
        "LeveeHighShedRate",
        "LeveeUpstreamCriticalSustained",
        "LeveeUpstreamNoHealthyBackend",
        "LeveeBackendDown",
        "LeveeZoneDown",
        "LeveePanicMode",
        "LeveeConfigReloadFailed",
        "LeveeTlsCertExpiresSoon",
        "LeveeTlsCertExpiresVerySoon",
        "LeveeProxyProtocolErrors",
        "LeveeDnsLookupsFailing",
        "LeveeDown",
    ] {
        assert!(names.contains(required), "no alert {required}");
    }
    let by_name = |n: &str| rules.iter().find(|r| r.alert == n).expect(n);
    let caution = by_name("LeveeUpstreamCaution");
    assert_eq!(caution.fields["expr"], "levee_load_level >= 1");
    assert_eq!(caution.fields["for"], "2m");
    assert_eq!(by_name("LeveeUpstreamDanger").fields["for"], "1m");
    assert_eq!(by_name("LeveeUpstreamCritical").fields["for"], "30s");
}

/// promtool unit tests: synthetic series in, the alerts that must (and must not) fire.
/// The rules are tested from a copy without annotations, which promtool would
/// otherwise compare word for word.
const PROMTOOL_TESTS: &str = r#"
rule_files:
  - rules.yml
evaluation_interval: 15s
tests:
  # Load levels: upstream a sits at caution, b at critical, c is safe.
  - interval: 15s
    input_series:
      - series: 'levee_load_level{job="levee",instance="l1",upstream="a"}'
        values: '1x40'
      - series: 'levee_load_level{job="levee",instance="l1",upstream="b"}'
        values: '3x40'
      - series: 'levee_load_level{job="levee",instance="l1",upstream="c"}'
        values: '0x40'
    alert_rule_test:
      - eval_time: 1m
        alertname: LeveeUpstreamCaution
      - eval_time: 1m
        alertname: LeveeUpstreamDanger
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, upstream: b, severity: warning, tier: red}
      - eval_time: 1m
        alertname: LeveeUpstreamCritical
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, upstream: b, severity: critical, tier: emergency}
      - eval_time: 1m
        alertname: LeveeUpstreamCriticalSustained
      - eval_time: 3m
        alertname: LeveeUpstreamCaution
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, upstream: a, severity: info, tier: yellow}
          - exp_labels: {job: levee, instance: l1, upstream: b, severity: info, tier: yellow}
      - eval_time: 3m
        alertname: LeveeUpstreamCriticalSustained
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, upstream: b, severity: page, tier: page}
  # Shedding: a sheds 1/3 of its requests, b 3/4; c has no traffic at all (0/0).
  - interval: 15s
    input_series:
      - series: 'levee_shed_total{job="levee",instance="l1",upstream="a",reason="queue_full",priority="normal"}'
        values: '0+30x60'
      - series: 'levee_requests_total{job="levee",instance="l1",upstream="a",backend="10.0.0.1:80",class="normal"}'
        values: '0+60x60'
      - series: 'levee_shed_total{job="levee",instance="l1",upstream="b",reason="queue_full",priority="normal"}'
        values: '0+90x60'
      - series: 'levee_requests_total{job="levee",instance="l1",upstream="b",backend="10.0.0.2:80",class="normal"}'
        values: '0+30x60'
      - series: 'levee_shed_total{job="levee",instance="l1",upstream="c",reason="queue_full",priority="normal"}'
        values: '0x60'
      - series: 'levee_requests_total{job="levee",instance="l1",upstream="c",backend="10.0.0.3:80",class="normal"}'
        values: '0x60'
    alert_rule_test:
      - eval_time: 5m
        alertname: LeveeHighShedRate
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, upstream: a, severity: critical, tier: emergency}
          - exp_labels: {job: levee, instance: l1, upstream: b, severity: critical, tier: emergency}
      - eval_time: 5m
        alertname: LeveeMostTrafficShed
      - eval_time: 11m
        alertname: LeveeMostTrafficShed
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, upstream: b, severity: page, tier: page}
  # Health: zone z1 of upstream a is down, z2 is up; upstream u has nothing left.
  - interval: 15s
    input_series:
      - series: 'levee_backend_healthy{job="levee",instance="l1",upstream="a",backend="b1",zone="z1"}'
        values: '0x20'
      - series: 'levee_backend_healthy{job="levee",instance="l1",upstream="a",backend="b2",zone="z1"}'
        values: '0x20'
      - series: 'levee_backend_healthy{job="levee",instance="l1",upstream="a",backend="b3",zone="z2"}'
        values: '1x20'
      - series: 'levee_backend_healthy{job="levee",instance="l1",upstream="u",backend="b4",zone="z1"}'
        values: '0x20'
      - series: 'levee_zone_healthy_backends{job="levee",instance="l1",upstream="a",zone="z1"}'
        values: '0x20'
      - series: 'levee_zone_healthy_backends{job="levee",instance="l1",upstream="a",zone="z2"}'
        values: '1x20'
      - series: 'levee_zone_healthy_backends{job="levee",instance="l1",upstream="u",zone="z1"}'
        values: '0x20'
      - series: 'levee_panic_mode{job="levee",instance="l1",upstream="a"}'
        values: '0x20'
      - series: 'levee_panic_mode{job="levee",instance="l1",upstream="u"}'
        values: '1x20'
    alert_rule_test:
      - eval_time: 30s
        alertname: LeveeBackendDown
      - eval_time: 2m
        alertname: LeveeBackendDown
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, upstream: a, backend: b1, zone: z1, severity: warning, tier: red}
          - exp_labels: {job: levee, instance: l1, upstream: a, backend: b2, zone: z1, severity: warning, tier: red}
          - exp_labels: {job: levee, instance: l1, upstream: u, backend: b4, zone: z1, severity: warning, tier: red}
      - eval_time: 2m
        alertname: LeveeZoneDown
        exp_alerts:
          - exp_labels: {job: levee, upstream: a, zone: z1, severity: critical, tier: emergency}
          - exp_labels: {job: levee, upstream: u, zone: z1, severity: critical, tier: emergency}
      - eval_time: 2m
        alertname: LeveeUpstreamNoHealthyBackend
        exp_alerts:
          - exp_labels: {job: levee, upstream: u, severity: page, tier: page}
      - eval_time: 30s
        alertname: LeveePanicMode
      - eval_time: 2m
        alertname: LeveePanicMode
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, upstream: u, severity: critical, tier: emergency}
  # Zone spill: upstream a spills half its requests, b a tenth.
  - interval: 1m
    input_series:
      - series: 'levee_zone_spill_total{job="levee",instance="l1",upstream="a"}'
        values: '0+60x40'
      - series: 'levee_requests_total{job="levee",instance="l1",upstream="a",backend="x",class="normal"}'
        values: '0+120x40'
      - series: 'levee_zone_spill_total{job="levee",instance="l1",upstream="b"}'
        values: '0+12x40'
      - series: 'levee_requests_total{job="levee",instance="l1",upstream="b",backend="y",class="normal"}'
        values: '0+120x40'
    alert_rule_test:
      - eval_time: 10m
        alertname: LeveeZoneSpill
      - eval_time: 20m
        alertname: LeveeZoneSpill
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, upstream: a, severity: info, tier: yellow}
  # Reloads: the first failure of a process (a series born at 1, which increase()
  # alone misses) fires, resolves after 10 minutes, and a later failure fires again.
  - interval: 30s
    input_series:
      - series: 'levee_config_reloads_total{job="levee",instance="l1",result="success"}'
        values: '1x60'
      - series: 'levee_config_reloads_total{job="levee",instance="l1",result="failure"}'
        values: '_x4 1x31 2x24'
    alert_rule_test:
      - eval_time: 1m
        alertname: LeveeConfigReloadFailed
      - eval_time: 3m
        alertname: LeveeConfigReloadFailed
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, result: failure, severity: warning, tier: red}
      - eval_time: 15m
        alertname: LeveeConfigReloadFailed
      - eval_time: 20m
        alertname: LeveeConfigReloadFailed
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, result: failure, severity: warning, tier: red}
  # A certificate reload fails at 2m (the counter exists from the start at 0).
  - interval: 30s
    input_series:
      - series: 'levee_tls_reload_errors_total{job="levee",instance="l1"}'
        values: '0x3 1x40'
    alert_rule_test:
      - eval_time: 1m
        alertname: LeveeCertificateReloadFailed
      - eval_time: 3m
        alertname: LeveeCertificateReloadFailed
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, severity: warning, tier: red}
      - eval_time: 15m
        alertname: LeveeCertificateReloadFailed
  # Certificates (time() starts at 0): default has 14 days and 30 minutes left,
  # api.test 3 days and 30 minutes, far.test 90 days.
  - interval: 1m
    input_series:
      - series: 'levee_tls_cert_expiry_seconds{job="levee",instance="l1",name="default"}'
        values: '1211400x180'
      - series: 'levee_tls_cert_expiry_seconds{job="levee",instance="l1",name="api.test"}'
        values: '261000x180'
      - series: 'levee_tls_cert_expiry_seconds{job="levee",instance="l1",name="far.test"}'
        values: '7776000x180'
    alert_rule_test:
      - eval_time: 20m
        alertname: LeveeTlsCertExpiresSoon
      - eval_time: 20m
        alertname: LeveeTlsCertExpiresVerySoon
      - eval_time: 2h
        alertname: LeveeTlsCertExpiresSoon
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, name: default, severity: warning, tier: red}
          - exp_labels: {job: levee, instance: l1, name: api.test, severity: warning, tier: red}
      - eval_time: 2h
        alertname: LeveeTlsCertExpiresVerySoon
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, name: api.test, severity: critical, tier: emergency}
  # PROXY protocol: l1 closes 2 connections/s without a header, l2 a few timeouts.
  - interval: 1m
    input_series:
      - series: 'levee_proxy_protocol_errors_total{job="levee",instance="l1",reason="missing"}'
        values: '0+120x30'
      - series: 'levee_proxy_protocol_errors_total{job="levee",instance="l2",reason="timeout"}'
        values: '0+120x30'
      - series: 'levee_proxy_protocol_errors_total{job="levee",instance="l2",reason="missing"}'
        values: '0x30'
    alert_rule_test:
      - eval_time: 8m
        alertname: LeveeProxyProtocolErrors
      - eval_time: 20m
        alertname: LeveeProxyProtocolErrors
        exp_alerts:
          - exp_labels: {instance: l1, severity: warning, tier: red}
  # DNS: l1's lookups all fail; l2's fail now and then but also succeed.
  - interval: 1m
    input_series:
      - series: 'levee_dns_lookups_total{job="levee",instance="l1",upstream="app",result="timeout"}'
        values: '0+12x30'
      - series: 'levee_dns_lookups_total{job="levee",instance="l1",upstream="app",result="ok"}'
        values: '5x30'
      - series: 'levee_dns_lookups_total{job="levee",instance="l2",upstream="app",result="servfail"}'
        values: '0+1x30'
      - series: 'levee_dns_lookups_total{job="levee",instance="l2",upstream="app",result="ok"}'
        values: '0+11x30'
    alert_rule_test:
      - eval_time: 3m
        alertname: LeveeDnsLookupsFailing
      - eval_time: 15m
        alertname: LeveeDnsLookupsFailing
        exp_alerts:
          - exp_labels: {instance: l1, upstream: app, severity: warning, tier: red}
  # One levee of two down; then every levee down.
  - interval: 15s
    input_series:
      - series: 'up{job="levee",instance="l1"}'
        values: '1x4 0x20'
      - series: 'up{job="levee",instance="l2"}'
        values: '1x24'
    alert_rule_test:
      - eval_time: 3m
        alertname: LeveeDown
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, severity: critical, tier: emergency}
      - eval_time: 3m
        alertname: LeveeAllInstancesDown
  - interval: 15s
    input_series:
      - series: 'up{job="levee",instance="l1"}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 2m
        alertname: LeveeAllInstancesDown
        exp_alerts:
          - exp_labels: {severity: page, tier: page}
  # Upstream a wants 4 backends and has 2 healthy for 20 minutes; b wants 2 and has 2.
  - interval: 1m
    input_series:
      - series: 'levee_upstream_desired_backends{job="levee",instance="l1",upstream="a"}'
        values: '4x30'
      - series: 'levee_backend_healthy{job="levee",instance="l1",upstream="a",backend="10.0.0.1:80",zone="z"}'
        values: '1x30'
      - series: 'levee_backend_healthy{job="levee",instance="l1",upstream="a",backend="10.0.0.2:80",zone="z"}'
        values: '1x30'
      - series: 'levee_upstream_desired_backends{job="levee",instance="l1",upstream="b"}'
        values: '2x30'
      - series: 'levee_backend_healthy{job="levee",instance="l1",upstream="b",backend="10.0.1.1:80",zone="z"}'
        values: '1x30'
      - series: 'levee_backend_healthy{job="levee",instance="l1",upstream="b",backend="10.0.1.2:80",zone="z"}'
        values: '1x30'
    alert_rule_test:
      - eval_time: 10m
        alertname: LeveeUpstreamNeedsMoreBackends
      - eval_time: 20m
        alertname: LeveeUpstreamNeedsMoreBackends
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, upstream: a, severity: warning, tier: red}
  # Spans dropped on l1 for 30 minutes; l2 exports all of its own.
  - interval: 1m
    input_series:
      - series: 'levee_trace_spans_dropped_total{job="levee",instance="l1"}'
        values: '0+30x40'
      - series: 'levee_trace_spans_dropped_total{job="levee",instance="l2"}'
        values: '0x40'
      - series: 'levee_trace_spans_exported_total{job="levee",instance="l2"}'
        values: '0+30x40'
    alert_rule_test:
      - eval_time: 10m
        alertname: LeveeTraceSpansDropped
      - eval_time: 30m
        alertname: LeveeTraceSpansDropped
        exp_alerts:
          - exp_labels: {job: levee, instance: l1, severity: info, tier: yellow}
"#;

#[test]
fn promtool_accepts_the_rules_and_they_fire_when_they_should() {
    let rules = repo_path("conf/alerts.yml");
    let Some(check) = run(
        "promtool",
        &["check", "rules", rules.to_str().unwrap()],
        None,
    ) else {
        println!("skipped: promtool not installed");
        return;
    };
    assert!(
        check.status.success(),
        "promtool check rules:\n{}{}",
        text(&check.stdout),
        text(&check.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let stripped: String = read("conf/alerts.yml")
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !["annotations:", "summary:", "description:", "runbook:"]
                .iter()
                .any(|k| t.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.path().join("rules.yml"), stripped).unwrap();
    std::fs::write(dir.path().join("tests.yml"), PROMTOOL_TESTS).unwrap();
    let out = run(
        "promtool",
        &["test", "rules", "tests.yml"],
        Some(dir.path()),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let exprs = dashboard_exprs(&dashboard());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (what, expr)) in exprs.iter().enumerate() {
        assert!(!expr.contains('\n'), "{what}: one line please");
        let expr = without_grafana_variables(expr).replace('\'', "''");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: '{expr}'\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, &rules).unwrap();
    let Some(out) = run(
        "promtool",
        &["check", "rules", path.to_str().unwrap()],
        None,
    ) else {
        println!("skipped: promtool not installed");
        return;
    };
    assert!(
        out.status.success(),
        "a dashboard query is not PromQL:\n{}{}\n{rules}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------
// (b2) The autoscaler examples: conf/k8s-hpa.yaml and conf/k8s-keda.yaml.
// ---------------------------------------------------------------------------------

/// Every YAML document of a file.
fn yaml_docs(rel: &str) -> Vec<serde_yaml::Value> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// The document of `kind` in a file.
fn doc_of(rel: &str, kind: &str) -> serde_yaml::Value {
    yaml_docs(rel)
        .into_iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("{rel}: no {kind}"))
}

/// prometheus-adapter's own config, from the ConfigMap in `conf/k8s-hpa.yaml`.
fn adapter_config() -> serde_yaml::Value {
    let map = doc_of("conf/k8s-hpa.yaml", "ConfigMap");
    let text = map["data"]["config.yaml"]
        .as_str()
        .expect("ConfigMap data config.yaml");
    serde_yaml::from_str(text).expect("prometheus-adapter config is YAML")
}

/// The HPA's external metric and the label names of its selector.
fn hpa_metric() -> (String, Vec<String>) {
    let hpa = doc_of("conf/k8s-hpa.yaml", "HorizontalPodAutoscaler");
    let metric = &hpa["spec"]["metrics"][0]["external"]["metric"];
    let labels = metric["selector"]["matchLabels"]
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    (
        metric["name"].as_str().expect("metric name").to_string(),
        labels,
    )
}

/// The PromQL the autoscalers run: prometheus-adapter's series and metrics queries
/// (its `<<.Series>>` and `<<.LabelMatchers>>` filled in as it would for the HPA's
/// selector) and KEDA's query.
fn autoscaler_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let (_, selector) = hpa_metric();
    let hpa = doc_of("conf/k8s-hpa.yaml", "HorizontalPodAutoscaler");
    let labels = &hpa["spec"]["metrics"][0]["external"]["metric"]["selector"]["matchLabels"];
    let matchers: Vec<String> = selector
        .iter()
        .map(|k| {
            format!(
                "{k}=\"{}\"",
                labels[k.as_str()].as_str().unwrap_or_default()
            )
        })
        .collect();
    let adapter = adapter_config();
    let rules = adapter["externalRules"]
        .as_sequence()
        .expect("externalRules");
    for (i, rule) in rules.iter().enumerate() {
        let series = rule["seriesQuery"].as_str().expect("seriesQuery");
        out.push((format!("adapter rule {i} seriesQuery"), series.to_string()));
        let name = series
            .split('{')
            .next()
            .unwrap_or(series)
            .trim()
            .to_string();
        let query = rule["metricsQuery"]
            .as_str()
            .expect("metricsQuery")
            .replace("<<.Series>>", &name)
            .replace("<<.LabelMatchers>>", &matchers.join(","))
            .replace("<<.GroupBy>>", "upstream");
        out.push((format!("adapter rule {i} metricsQuery"), query));
    }
    let keda = doc_of("conf/k8s-keda.yaml", "ScaledObject");
    for (i, t) in keda["spec"]["triggers"]
        .as_sequence()
        .expect("triggers")
        .iter()
        .enumerate()
    {
        if let Some(q) = t["metadata"]["query"].as_str() {
            out.push((format!("KEDA trigger {i} query"), q.to_string()));
        }
    }
    out
}

/// Checks `v` against a schema written in a small subset of OpenAPI's vocabulary:
/// `type` (object, array, string, integer, boolean, quantity: a string or an
/// integer, map: an object of `values`), `required`, `properties` (with `closed`, no
/// other key is allowed: a misspelt field is an error, as with `kubectl --validate`),
/// `items`, `enum`, `minimum`, `maximum`.
fn check_schema(path: &str, v: &serde_yaml::Value, schema: &Value, problems: &mut Vec<String>) {
    use serde_yaml::Value as Y;
    let kind = schema["type"].as_str().unwrap_or("any");
    let ok = match (kind, v) {
        ("object" | "map", Y::Mapping(_)) => true,
        ("array", Y::Sequence(_)) => true,
        ("string", Y::String(_)) => true,
        ("integer", Y::Number(n)) => n.is_i64(),
        ("boolean", Y::Bool(_)) => true,
        ("quantity", Y::String(_)) => true,
        ("quantity", Y::Number(n)) => n.is_i64() || n.is_f64(),
        ("any", _) => true,
        _ => false,
    };
    if !ok {
        problems.push(format!("{path}: expected {kind}, got {v:?}"));
        return;
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.iter().any(|o| o.as_str() == v.as_str()) {
            problems.push(format!("{path}: {v:?} is not one of {options:?}"));
        }
    }
    if let (Some(n), Some(min)) = (v.as_i64(), schema["minimum"].as_i64()) {
        if n < min {
            problems.push(format!("{path}: {n} is below {min}"));
        }
    }
    if let (Some(n), Some(max)) = (v.as_i64(), schema["maximum"].as_i64()) {
        if n > max {
            problems.push(format!("{path}: {n} is above {max}"));
        }
    }
    if let (Some(items), Some(seq)) = (schema.get("items"), v.as_sequence()) {
        for (i, item) in seq.iter().enumerate() {
            check_schema(&format!("{path}[{i}]"), item, items, problems);
        }
    }
    let Some(map) = v.as_mapping() else { return };
    for req in schema["required"].as_array().into_iter().flatten() {
        let key = req.as_str().unwrap_or_default();
        if !map.contains_key(key) {
            problems.push(format!("{path}: required field {key} missing"));
        }
    }
    let props = schema["properties"].as_object();
    for (k, value) in map {
        let key = k.as_str().unwrap_or_default();
        let sub = format!("{path}.{key}");
        if kind == "map" {
            check_schema(&sub, value, &schema["values"], problems);
        } else if let Some(p) = props.and_then(|p| p.get(key)) {
            check_schema(&sub, value, p, problems);
        } else if schema["closed"].as_bool() == Some(true) {
            problems.push(format!("{sub}: unknown field"));
        }
    }
}

/// The parts of Kubernetes' OpenAPI schema for `autoscaling/v2`
/// `HorizontalPodAutoscaler` that an HPA on an External metric uses.
fn hpa_schema() -> Value {
    let int32 = serde_json::json!({"type": "integer", "minimum": 0, "maximum": 2147483647});
    let scaling_rules = serde_json::json!({
        "type": "object", "closed": true,
        "properties": {
            "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
            "selectPolicy": {"type": "string", "enum": ["Max", "Min", "Disabled"]},
            "tolerance": {"type": "quantity"},
            "policies": {"type": "array", "items": {
                "type": "object", "closed": true,
                "required": ["type", "value", "periodSeconds"],
                "properties": {
                    "type": {"type": "string", "enum": ["Pods", "Percent"]},
                    "value": {"type": "integer", "minimum": 1},
                    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800}
                }
            }}
        }
    });
    serde_json::json!({
        "type": "object", "closed": true,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string", "enum": ["autoscaling/v2"]},
            "kind": {"type": "string", "enum": ["HorizontalPodAutoscaler"]},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": {
                "type": "object", "closed": true,
                "required": ["scaleTargetRef", "maxReplicas"],
                "properties": {
                    "scaleTargetRef": {
                        "type": "object", "closed": true, "required": ["kind", "name"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": {"type": "string"}
                        }
                    },
                    "minReplicas": {"type": "integer", "minimum": 1, "maximum": 2147483647},
                    "maxReplicas": int32,
                    "metrics": {"type": "array", "items": {
                        "type": "object", "closed": true, "required": ["type"],
                        "properties": {
                            "type": {"type": "string", "enum": ["ContainerResource", "External", "Object", "Pods", "Resource"]},
                            "external": {
                                "type": "object", "closed": true, "required": ["metric", "target"],
                                "properties": {
                                    "metric": {
                                        "type": "object", "closed": true, "required": ["name"],
                                        "properties": {
                                            "name": {"type": "string"},
                                            "selector": {
                                                "type": "object", "closed": true,
                                                "properties": {
                                                    "matchLabels": {"type": "map", "values": {"type": "string"}},
                                                    "matchExpressions": {"type": "array"}
                                                }
                                            }
                                        }
                                    },
                                    "target": {
                                        "type": "object", "closed": true, "required": ["type"],
                                        "properties": {
                                            "type": {"type": "string", "enum": ["Utilization", "Value", "AverageValue"]},
                                            "value": {"type": "quantity"},
                                            "averageValue": {"type": "quantity"},
                                            "averageUtilization": int32
                                        }
                                    }
                                }
                            }
                        }
                    }},
                    "behavior": {
                        "type": "object", "closed": true,
                        "properties": {"scaleUp": scaling_rules, "scaleDown": scaling_rules}
                    }
                }
            }
        }
    })
}

/// The parts of KEDA's `keda.sh/v1alpha1` `ScaledObject` CRD schema a Prometheus
/// trigger uses, with the Prometheus scaler's required metadata.
fn scaled_object_schema() -> Value {
    let int32 = serde_json::json!({"type": "integer", "minimum": 0, "maximum": 2147483647});
    serde_json::json!({
        "type": "object", "closed": true,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string", "enum": ["keda.sh/v1alpha1"]},
            "kind": {"type": "string", "enum": ["ScaledObject"]},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": {
                "type": "object", "closed": true,
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {
                        "type": "object", "closed": true, "required": ["name"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": {"type": "string"},
                            "envSourceContainerName": {"type": "string"}
                        }
                    },
                    "pollingInterval": int32,
                    "cooldownPeriod": int32,
                    "initialCooldownPeriod": int32,
                    "idleReplicaCount": int32,
                    "minReplicaCount": int32,
                    "maxReplicaCount": int32,
                    "fallback": {"type": "object"},
                    "advanced": {
                        "type": "object", "closed": true,
                        "properties": {
                            "restoreToOriginalReplicaCount": {"type": "boolean"},
                            "scalingModifiers": {"type": "object"},
                            "horizontalPodAutoscalerConfig": {
                                "type": "object", "closed": true,
                                "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}}
                            }
                        }
                    },
                    "triggers": {"type": "array", "items": {
                        "type": "object", "closed": true, "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string", "enum": ["prometheus"]},
                            "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"type": "string", "enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {"type": "object"},
                            "metadata": {
                                "type": "map", "values": {"type": "string"},
                                "required": ["serverAddress", "query", "threshold"]
                            }
                        }
                    }}
                }
            }
        }
    })
}

#[test]
fn autoscaler_examples_match_their_schemas_and_read_the_figure_itself() {
    let mut problems = Vec::new();
    let hpa = doc_of("conf/k8s-hpa.yaml", "HorizontalPodAutoscaler");
    check_schema(
        "HorizontalPodAutoscaler",
        &hpa,
        &hpa_schema(),
        &mut problems,
    );
    let keda = doc_of("conf/k8s-keda.yaml", "ScaledObject");
    check_schema(
        "ScaledObject",
        &keda,
        &scaled_object_schema(),
        &mut problems,
    );
    // The behaviour of the HPA's scale-down rules, checked against the schema above.
    let behavior = &keda["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
    let hpa_behavior = &hpa_schema()["properties"]["spec"]["properties"]["behavior"];
    check_schema(
        "ScaledObject behavior",
        behavior,
        hpa_behavior,
        &mut problems,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Each scales to the figure itself: an External AverageValue target of 1 (desired
    // replicas = ceil(value / 1)), and KEDA's AverageValue threshold of "1".
    let spec = &hpa["spec"];
    let min = spec["minReplicas"].as_i64().unwrap();
    assert!(min >= 1 && min <= spec["maxReplicas"].as_i64().unwrap());
    let target = &spec["metrics"][0]["external"]["target"];
    assert_eq!(target["type"].as_str(), Some("AverageValue"));
    assert_eq!(target["averageValue"].as_str(), Some("1"));
    let (metric, selector) = hpa_metric();
    assert_eq!(metric, "levee_upstream_desired_backends");
    assert_eq!(selector, ["upstream"]);
    let trigger = &keda["spec"]["triggers"][0];
    assert_eq!(trigger["metricType"].as_str(), Some("AverageValue"));
    assert_eq!(trigger["metadata"]["threshold"].as_str(), Some("1"));
    assert!(trigger["metadata"]["query"]
        .as_str()
        .unwrap()
        .contains("levee_upstream_desired_backends"));
    // levee already holds the figure after a peak: no second window.
    assert_eq!(
        spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"].as_i64(),
        Some(0)
    );
    // prometheus-adapter serves the metric under the name the HPA asks for.
    let adapter = adapter_config();
    let rule = &adapter["externalRules"][0];
    assert_eq!(rule["name"]["as"].as_str(), Some(metric.as_str()));
    assert!(rule["metricsQuery"]
        .as_str()
        .unwrap()
        .contains("<<.Series>>"));
    // And the file's own documents are the kinds it says.
    let kinds: Vec<String> = yaml_docs("conf/k8s-hpa.yaml")
        .iter()
        .filter_map(|d| d["kind"].as_str().map(String::from))
        .collect();
    assert_eq!(kinds, ["ConfigMap", "HorizontalPodAutoscaler"]);

    // A misspelt field and a bad enum are caught: the checker is not a no-op.
    let mut bad = hpa.clone();
    bad["spec"]["metrics"][0]["external"]["target"]["type"] = "Average".into();
    bad["spec"]["maxReplica"] = 3.into();
    let mut found = Vec::new();
    check_schema("bad", &bad, &hpa_schema(), &mut found);
    assert_eq!(found.len(), 2, "{found:?}");
}

#[test]
fn autoscaler_queries_are_valid_promql() {
    let mut rules = String::from("groups:\n  - name: autoscalers\n    rules:\n");
    for (i, (what, expr)) in autoscaler_queries().iter().enumerate() {
        assert!(!expr.contains('\n'), "{what}: one line please");
        let expr = expr.replace('\'', "''");
        rules.push_str(&format!(
            "      - record: autoscaler:query_{i}\n        expr: '{expr}'\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("autoscaler-queries.yml");
    std::fs::write(&path, &rules).unwrap();
    let Some(out) = run(
        "promtool",
        &["check", "rules", path.to_str().unwrap()],
        None,
    ) else {
        println!("skipped: promtool not installed");
        return;
    };
    assert!(
        out.status.success(),
        "an autoscaler query is not PromQL:\n{}{}\n{rules}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------
// (c) The systemd unit.
// ---------------------------------------------------------------------------------

#[test]
fn systemd_unit_is_hardened_and_reloads_with_hup() {
    let unit = read("systemd/levee.service");
    let d = unit_directives(&unit);
    let one = |k: &str| -> &str {
        let v = d.get(k).unwrap_or_else(|| panic!("levee.service: no {k}="));
        v.last().expect("value")
    };
    for (key, want) in [
        (
            "ExecStart",
            "/usr/local/bin/levee run -c /etc/levee/levee.toml",
        ),
        (
            "ExecStartPre",
            "/usr/local/bin/levee check -c /etc/levee/levee.toml",
        ),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("LimitNOFILE", "1048576"),
        ("ConfigurationDirectory", "levee"),
    ] {
        assert_eq!(one(key), want, "levee.service: {key}=");
    }
    // Reload is SIGHUP to the main process, after the file has been checked.
    let reload = &d["ExecReload"];
    assert_eq!(
        reload.last().map(String::as_str),
        Some("/bin/kill -HUP $MAINPID")
    );
    assert!(reload[..reload.len() - 1]
        .iter()
        .all(|c| c.contains("levee check")));

    // systemd must not SIGKILL levee while it drains: TimeoutStopSec exceeds the
    // grace period of the shipped config, by a margin but not by minutes.
    let config = levee::config::load(&repo_path("conf/levee.toml")).expect("conf/levee.toml");
    let grace = config.server.grace_period;
    let stop: u64 = one("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    let stop = Duration::from_secs(stop);
    assert!(
        stop > grace && stop <= grace + Duration::from_secs(30),
        "TimeoutStopSec {stop:?} vs grace period {grace:?}"
    );

    // systemd's own reading of the unit, with the levee under test as the binary
    // (verify refuses a unit whose binary does not exist).
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("levee.service");
    std::fs::write(
        &local,
        unit.replace("/usr/local/bin/levee", env!("CARGO_BIN_EXE_levee")),
    )
    .unwrap();
    let Some(out) = run(
        "systemd-analyze",
        &["verify", local.to_str().unwrap()],
        None,
    ) else {
        println!("skipped: systemd-analyze not installed (the directives were checked as text)");
        return;
    };
    // verify exits 0 on unknown keys and bad values, but says so on stderr.
    let complaints: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("levee.service"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify:\n{}",
        text(&out.stderr)
    );

    // Exposure score, where this systemd can compute it offline (v250+): 2.0 or less
    // ("OK"); a proxy keeps network access and one capability, little else.
    let out = run(
        "systemd-analyze",
        &[
            "security",
            "--offline=yes",
            "--threshold=20",
            local.to_str().unwrap(),
        ],
        None,
    )
    .unwrap();
    let err = text(&out.stderr);
    if err.contains("unrecognized option") || err.contains("Unknown option") {
        println!("skipped: systemd-analyze security --offline needs systemd 250");
        return;
    }
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{}{err}",
        text(&out.stdout)
    );
}

// ---------------------------------------------------------------------------------
// (d) The dashboard.
// ---------------------------------------------------------------------------------

#[test]
fn dashboard_is_importable_and_every_panel_has_a_query() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dash["__inputs"][0]["pluginId"], "prometheus");
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let ds = serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});

    let all = panels(&dash);
    let mut ids = BTreeSet::new();
    let mut boxes = Vec::new();
    for p in &all {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "{title}: id twice"
        );
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: gridPos {g}");
        boxes.push((title, x, y, w, h));
        if p["type"] == "row" {
            // Rows group panels; they hold no query of their own.
            assert!(p.get("targets").is_none(), "row {title} has targets");
            continue;
        }
        assert_eq!(p["datasource"], ds, "{title}: datasource");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no target");
        for t in targets {
            assert_eq!(t["datasource"], ds, "{title}: target datasource");
            assert!(
                t["expr"].as_str().is_some_and(|e| e.contains("levee_")),
                "{title}: target without a levee query"
            );
        }
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}: no description"
        );
    }
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            let apart =
                a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1 || a.2 + a.4 <= b.2 || b.2 + b.4 <= a.2;
            assert!(apart, "panels {:?} and {:?} overlap", a.0, b.0);
        }
    }

    // The template variable, and the views the runbooks point to.
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let upstream = vars
        .iter()
        .find(|v| v["name"] == "upstream")
        .expect("variable upstream");
    assert_eq!(upstream["includeAll"], true);
    assert_eq!(upstream["datasource"], ds);
    let exprs: Vec<String> = dashboard_exprs(&dash).into_iter().map(|(_, e)| e).collect();
    let all_exprs = exprs.join("\n");
    for needed in [
        "levee_load_level",
        "levee_zone_healthy_backends",
        "levee_backend_ejected",
        "levee_panic_mode",
        "levee_zone_spill_total",
        "levee_requests_total",
        "levee_shed_total",
        "levee_inflight",
        "levee_backend_limit",
        "levee_queue_depth",
        "histogram_quantile(0.50, sum by (upstream, le) (rate(levee_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (upstream, le) (rate(levee_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (upstream, le) (rate(levee_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (upstream, le) (rate(levee_queue_wait_seconds_bucket",
        "levee_backend_healthy",
        "levee_config_reloads_total",
    ] {
        assert!(all_exprs.contains(needed), "no dashboard query with {needed}");
    }
    // The level panels name and colour the four levels.
    let level_panels: Vec<&&Value> =
        all.iter()
            .filter(|p| {
                p["targets"].as_array().into_iter().flatten().any(|t| {
                    levee_names(t["expr"].as_str().unwrap_or("")).contains("levee_load_level")
                })
            })
            .collect();
    assert!(!level_panels.is_empty());
    for p in level_panels {
        let mappings = &p["fieldConfig"]["defaults"]["mappings"][0]["options"];
        for (value, name, colour) in [
            ("0", "safe", "green"),
            ("1", "caution", "yellow"),
            ("2", "danger", "orange"),
            ("3", "critical", "red"),
        ] {
            assert_eq!(mappings[value]["text"], name, "{}", p["title"]);
            assert_eq!(mappings[value]["color"], colour, "{}", p["title"]);
        }
    }
}

// ---------------------------------------------------------------------------------
// The scanners themselves.
// ---------------------------------------------------------------------------------

#[test]
fn scanners_read_promql_and_the_exposition_format() {
    let expr = r#"sum by (job, upstream) (rate(levee_shed_total{reason="a,b}",upstream=~"$upstream"}[5m])) / ignoring(x) xlevee_no levee_inflight"#;
    assert_eq!(
        levee_idents(expr)
            .into_iter()
            .map(|(_, n)| n)
            .collect::<Vec<_>>(),
        ["levee_shed_total", "levee_inflight"]
    );
    let pos = expr.find("levee_shed_total{").unwrap() + "levee_shed_total".len();
    assert_eq!(matcher_labels(&expr[pos..]), ["reason", "upstream"]);
    assert_eq!(grouping_labels(expr), ["job", "upstream"]);

    let scrape = Scrape::parse(
        "# HELP levee_h x\n# TYPE levee_h histogram\nlevee_h_bucket{upstream=\"u\",le=\"0.1\"} 1\nlevee_h_sum{upstream=\"u\"} 0.5\nlevee_h_count{upstream=\"u\"} 1\n# TYPE levee_c counter\nlevee_c{a=\"x\\\"}y\"} 3\n",
    );
    assert_eq!(
        scrape.family_of_series("levee_h_bucket").as_deref(),
        Some("levee_h")
    );
    assert_eq!(
        scrape.family_of_series("levee_h"),
        None,
        "a bare histogram has no series"
    );
    assert!(scrape.knows("levee_h"));
    assert_eq!(scrape.value("levee_c", &[("a", "x\"}y")]), 3.0);
    assert!(scrape
        .check_expr(
            "t",
            "sum by (upstream, le) (rate(levee_h_bucket{upstream=\"u\"}[1m]))"
        )
        .is_empty());
    let problems = scrape.check_expr("t", "sum by (zone) (levee_x{zone=\"a\"})");
    assert_eq!(problems.len(), 2, "{problems:?}");
}
