//! HTTP purge targets against real HTTP servers on loopback (wiremock): every node gets the
//! configured method and headers, refusals are per path, outages are outages, 5xx is retried.

use std::time::Duration;

use invalidator::apply::cdn::{CdnError, CdnTargets};
use invalidator::config::Config;
use invalidator::plan::PlanMap;
use wiremock::matchers::{header, method, path};
use wiremock::{Match, Mock, MockServer, ResponseTemplate};

fn target(urls: Vec<String>, retry_for: Duration) -> CdnTargets {
    let config = Config::from_toml(&format!(
        "[cdn.edge]\nkind = \"http\"\nurls = {urls:?}\nmethod = \"PURGE\"\ntimeout = \"2s\"\n\
         retry_for = \"{}\"\nconcurrency = 8\n[cdn.edge.headers]\nX-Purge-Token = \"s3cret\"\n",
        humantime::format_duration(retry_for)
    ))
    .unwrap()
    .cdn;
    CdnTargets::from_config(&config, None).unwrap()
}

fn purges(paths: &[(&str, Vec<u32>)]) -> PlanMap<String, PlanMap<String, Vec<u32>>> {
    let mut m = PlanMap::default();
    m.insert(
        "edge".to_string(),
        paths
            .iter()
            .map(|(p, o)| (p.to_string(), o.clone()))
            .collect(),
    );
    m
}

/// Makes `s` answer the requests that match `m` with `status` (only the first `times` of them
/// with `Some`).
async fn answer(s: &MockServer, m: impl Match + 'static, status: u16, times: Option<u64>) {
    let mock = Mock::given(m).respond_with(ResponseTemplate::new(status));
    match times {
        Some(n) => mock.up_to_n_times(n).mount(s).await,
        None => mock.mount(s).await,
    }
}

#[tokio::test]
async fn purges_every_node_with_method_and_headers() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    for s in [&a, &b] {
        Mock::given(method("PURGE"))
            .and(header("X-Purge-Token", "s3cret"))
            .respond_with(ResponseTemplate::new(200))
            .expect(2)
            .mount(s)
            .await;
    }
    let cdn = target(
        vec![a.uri(), format!("{}/", b.uri())],
        Duration::from_secs(2),
    );
    let report = cdn
        .purge(&purges(&[
            ("/api/products/1", vec![0]),
            ("/products/1/*", vec![0, 1]),
        ]))
        .await
        .unwrap();
    assert_eq!(report.purged, 2);
    assert!(report.rejected.is_empty());
    let seen: Vec<String> = a
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_string())
        .collect();
    assert!(seen.contains(&"/api/products/1".to_string()), "{seen:?}");
    assert!(seen.contains(&"/products/1/*".to_string()), "{seen:?}");
}

#[tokio::test]
async fn a_refused_path_is_rejected_with_its_events_and_the_others_pass() {
    let s = MockServer::start().await;
    answer(&s, path("/forbidden"), 400, None).await;
    answer(&s, path("/not-cached"), 404, None).await;
    answer(&s, path("/ok"), 204, None).await;
    let cdn = target(vec![s.uri()], Duration::from_secs(2));
    let report = cdn
        .purge(&purges(&[
            ("/ok", vec![0]),
            ("/forbidden", vec![1, 2]),
            ("/not-cached", vec![3]),
        ]))
        .await
        .unwrap();
    assert_eq!(report.purged, 2, "404 means nothing cached: accepted");
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].path, "/forbidden");
    assert_eq!(report.rejected[0].origins, vec![1, 2]);
    assert!(
        report.rejected[0].error.contains("400"),
        "{}",
        report.rejected[0].error
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_accepted() {
    let s = MockServer::start().await;
    answer(&s, method("PURGE"), 503, Some(2)).await;
    answer(&s, method("PURGE"), 200, None).await;
    let cdn = target(vec![s.uri()], Duration::from_secs(5));
    let report = cdn.purge(&purges(&[("/p", vec![0])])).await.unwrap();
    assert_eq!(report.purged, 1);
    assert_eq!(s.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn an_unreachable_node_is_an_outage_not_a_rejection() {
    // Nothing listens on port 1.
    let cdn = target(
        vec!["http://127.0.0.1:1".into()],
        Duration::from_millis(300),
    );
    let err = cdn.purge(&purges(&[("/p", vec![0])])).await.unwrap_err();
    assert!(
        matches!(err, CdnError::Unavailable { ref target, .. } if target == "edge"),
        "{err}"
    );
}

#[tokio::test]
async fn a_node_that_does_not_allow_purges_is_an_outage_not_a_rejection() {
    // Varnish answers 405 when the client is not in its purge ACL: every path would fail the
    // same way, so it is a configuration outage, not a reason to dead-letter the events.
    let s = MockServer::start().await;
    answer(&s, method("PURGE"), 405, None).await;
    let cdn = target(vec![s.uri()], Duration::from_millis(300));
    let err = cdn
        .purge(&purges(&[("/p", vec![0]), ("/q", vec![1])]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("405"), "{err}");
    assert!(
        s.received_requests().await.unwrap().len() > 2,
        "retried before giving up"
    );
    let stats = cdn.stats();
    assert_eq!(stats[0].1.paths_sent, 0);
    assert!(stats[0].1.failed_attempts > 2, "{:?}", stats[0].1);
}

#[tokio::test]
async fn stats_count_requests_and_paths_per_target() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    for s in [&a, &b] {
        answer(s, method("PURGE"), 200, None).await;
    }
    let cdn = target(vec![a.uri(), b.uri()], Duration::from_secs(2));
    cdn.purge(&purges(&[
        ("/x", vec![0]),
        ("/y", vec![1]),
        ("/z", vec![2]),
    ]))
    .await
    .unwrap();
    let (name, s) = &cdn.stats()[0];
    assert_eq!(name, "edge");
    assert_eq!(s.kind, "http");
    assert_eq!(s.paths_requested, 3);
    assert_eq!(s.paths_sent, 3);
    assert_eq!(s.requests, 6, "3 paths on 2 nodes");
    assert_eq!(s.estimated_cost_usd(), 0.0);
}

/// `s`'s URL with a user and password in it.
fn with_password(uri: &str) -> String {
    uri.replacen("http://", "http://purger:pw-s3cr3t@", 1)
}

#[tokio::test]
async fn a_node_password_is_sent_but_never_shown() {
    let s = MockServer::start().await;
    answer(&s, path("/forbidden"), 400, None).await;
    let cdn = target(vec![with_password(&s.uri())], Duration::from_secs(2));
    let report = cdn
        .purge(&purges(&[("/forbidden", vec![0])]))
        .await
        .unwrap();
    // The refusal is what a dead letter carries.
    let error = &report.rejected[0].error;
    assert!(!error.contains("pw-s3cr3t"), "{error}");
    assert!(error.contains("purger:***@"), "{error}");
    let sent = &s.received_requests().await.unwrap()[0];
    let auth = sent.headers.get("authorization").expect("credentials sent");
    assert!(auth.to_str().unwrap().starts_with("Basic "), "{auth:?}");

    // An outage is what /readyz and the replay summary show.
    let down = target(
        vec![with_password("http://127.0.0.1:1")],
        Duration::from_millis(300),
    );
    let err = down
        .purge(&purges(&[("/p", vec![0])]))
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("pw-s3cr3t"), "{err}");
    assert!(err.contains("purger:***@"), "{err}");
}

/// A node that redirects to `to` with `status`.
async fn redirect(s: &MockServer, status: u16, to: &str) {
    Mock::given(method("PURGE"))
        .respond_with(ResponseTemplate::new(status).insert_header("Location", to))
        .mount(s)
        .await;
}

#[tokio::test]
async fn a_purge_is_never_sent_to_a_host_that_is_not_configured() {
    let other = MockServer::start().await;
    answer(&other, method("PURGE"), 200, None).await;
    answer(&other, method("GET"), 200, None).await;

    // Control: an HTTP client as it comes (reqwest's default policy) follows the redirect and
    // carries the custom header, the purge token, to the other host.
    let node = MockServer::start().await;
    redirect(&node, 307, &format!("{}/elsewhere", other.uri())).await;
    let sent = reqwest::Client::new()
        .request(reqwest::Method::from_bytes(b"PURGE").unwrap(), node.uri())
        .header("X-Purge-Token", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200, "the default client followed");
    let leaked = other.received_requests().await.unwrap();
    assert_eq!(leaked.len(), 1);
    assert_eq!(leaked[0].headers.get("X-Purge-Token").unwrap(), "s3cret");
    other.reset().await;
    answer(&other, method("PURGE"), 200, None).await;
    answer(&other, method("GET"), 200, None).await;

    // Ours: every kind of redirect to another origin is a configuration outage, and the other
    // host gets nothing.
    for status in [301, 302, 303, 307, 308] {
        let node = MockServer::start().await;
        redirect(&node, status, &format!("{}/elsewhere", other.uri())).await;
        let cdn = target(vec![node.uri()], Duration::from_millis(200));
        let err = cdn
            .purge(&purges(&[("/p", vec![0])]))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("HTTP {status}")), "{err}");
        assert!(
            err.contains(&format!("redirected to {}", other.uri())),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }
    assert!(
        other.received_requests().await.unwrap().is_empty(),
        "nothing reached the host that is not configured"
    );
}

#[tokio::test]
async fn a_redirect_that_keeps_the_method_and_the_origin_is_followed() {
    let s = MockServer::start().await;
    Mock::given(method("PURGE"))
        .and(path("/old/p"))
        .respond_with(ResponseTemplate::new(308).insert_header("Location", "/new/p"))
        .mount(&s)
        .await;
    Mock::given(method("PURGE"))
        .and(path("/new/p"))
        .and(header("X-Purge-Token", "s3cret"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&s)
        .await;
    let cdn = target(vec![s.uri()], Duration::from_secs(2));
    let report = cdn.purge(&purges(&[("/old/p", vec![0])])).await.unwrap();
    assert_eq!(report.purged, 1);

    // A 301 on the same host would turn the PURGE into a GET that answers 200: not followed.
    let moved = MockServer::start().await;
    Mock::given(method("PURGE"))
        .respond_with(ResponseTemplate::new(301).insert_header("Location", "/moved"))
        .mount(&moved)
        .await;
    answer(&moved, method("GET"), 200, None).await;
    let cdn = target(vec![moved.uri()], Duration::from_millis(200));
    let err = cdn.purge(&purges(&[("/p", vec![0])])).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 301"), "{err}");
    let gets = moved.received_requests().await.unwrap();
    assert!(
        gets.iter().all(|r| r.method.as_str() == "PURGE"),
        "no GET sent"
    );
}
