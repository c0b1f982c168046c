//! The live status page (`GET /status` on the admin port) in a real
//! browser: headless Chromium renders it during a run through the real
//! broker, the numbers it shows equal `/metrics` (and the latest window
//! equals the stats topic), and a screenshot is kept as a CI artifact in
//! `$PIPELINE_CACHE/artifacts/status.png`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pipeline_tests::{
    broker_with_topic, cache, count, free_port, generate, http, plugin, read_all, sigterm,
    spawn_pipeline, wait_admin, wait_exit,
};

/// The browser: `PIPELINE_CHROMIUM`, or `chromium` on the PATH (test.sh
/// installs it).
fn chromium() -> String {
    std::env::var("PIPELINE_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Runs headless Chromium on `url` with `args`, giving the page's scripts
/// three seconds of virtual time.
fn browser(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .args(["--virtual-time-budget=3000", "--window-size=1280,1000"])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium (tests/scripts/test.sh installs it)")
}

/// The number in the element with `marker` (an attribute string such as
/// `id="records-in"`), as shown (thousands separators removed).
fn shown(dom: &str, marker: &str) -> u64 {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in the page:\n{dom}"));
    let text = &dom[at..];
    let start = text.find('>').expect("element") + 1;
    let end = start + text[start..].find('<').expect("element end");
    text[start..end]
        .replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{marker}: {:?} is not a number", &text[start..end]))
}

/// The value of metric `name`, which must be there.
fn metric(text: &str, name: &str) -> u64 {
    pipeline_tests::metric(text, name).unwrap_or_else(|| panic!("{name} not in /metrics")) as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_what_the_metrics_say() {
    let (_broker, bootstrap, client) = broker_with_topic("in", 2).await;
    // 6,000 events at 10 per second of event time: several closed windows.
    generate(
        &bootstrap,
        "in",
        &["--count", "6000", "--malformed", "0.02", "--seed", "9"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("pipeline.toml");
    let stages: String = ["android_filter", "enrich", "categorize", "anomaly"]
        .iter()
        .map(|s| format!("[[stage]]\nplugin = \"{}\"\n", plugin(s).display()))
        .collect();
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap = \"{bootstrap}\"\n[input]\ntopic = \"in\"\n[output]\ntopic = \"out\"\n\
             [runtime]\nadmin = \"127.0.0.1:{port}\"\n{stages}\
             [[stage]]\nplugin = \"{}\"\noutputs = {{ counts = \"counts\" }}\n",
            plugin("version_counts").display()
        ),
    )
    .expect("write config");
    let (mut pipeline, log_path) = spawn_pipeline(&config, &[], dir.path(), "pipeline");
    wait_admin(port);
    let metrics =
        pipeline_tests::eventually_async(Duration::from_secs(60), "the run finishes", || async {
            let (_, text) = http(port, "GET", "/metrics");
            let delivered = metric(&text, "pipeline_records_out_total") as i64;
            if metric(&text, "pipeline_records_in_total") == 6000
                && delivered == count(&client, "out").await
            {
                Ok(text)
            } else {
                Err(std::fs::read_to_string(&log_path).unwrap_or_default())
            }
        })
        .await;

    let url = format!("http://127.0.0.1:{port}/status");
    let page = browser(&url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&page.stdout).into_owned();
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page's script ran: {dom}\n{}",
        String::from_utf8_lossy(&page.stderr)
    );
    for (id, name) in [
        ("id=\"records-in\"", "pipeline_records_in_total"),
        ("id=\"records-out\"", "pipeline_records_out_total"),
        ("id=\"dropped\"", "pipeline_records_dropped_total"),
        ("id=\"dead-letters\"", "pipeline_dead_letters_total"),
        ("id=\"generation\"", "pipeline_stage_generation"),
    ] {
        assert_eq!(
            shown(&dom, id),
            metric(&metrics, name),
            "{id} against {name}"
        );
    }
    for stage in ["android_filter", "anomaly", "version_counts"] {
        let row = &dom[dom
            .find(&format!("data-stage=\"{stage}\""))
            .unwrap_or_else(|| panic!("no row for {stage}"))..];
        assert_eq!(
            shown(row, "class=\"out\""),
            metric(
                &metrics,
                &format!("pipeline_stage_records_out_total{{stage=\"{stage}\"}}")
            ),
            "stage {stage}"
        );
    }
    assert_eq!(shown(&dom, "id=\"lag-total\""), 0, "caught up");

    // The latest window the page shows equals the stats topic.
    let mut latest: BTreeMap<String, (i64, String, u64)> = BTreeMap::new();
    for r in read_all(&client, "counts").await {
        let v: serde_json::Value =
            serde_json::from_slice(r.record.value.as_deref().expect("value")).expect("json");
        let key = String::from_utf8(r.record.key.expect("key")).expect("utf-8");
        latest.insert(
            key,
            (
                v["window_start_ms"].as_i64().expect("start"),
                v["app_version"].as_str().expect("version").to_string(),
                v["count"].as_u64().expect("count"),
            ),
        );
    }
    let newest = latest
        .values()
        .map(|(s, _, _)| *s)
        .max()
        .expect("a window closed");
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (start, version, n) in latest.values() {
        if *start == newest {
            *want.entry(version.clone()).or_default() += n;
        }
    }
    for (version, n) in &want {
        let row = &dom[dom
            .find(&format!("data-version=\"{version}\""))
            .unwrap_or_else(|| panic!("version {version} not shown"))..];
        assert_eq!(
            shown(row, "class=\"count\""),
            *n,
            "window count of {version}"
        );
    }

    // Keep a screenshot as a CI artifact.
    let shot: PathBuf = cache().join("artifacts/status.png");
    std::fs::create_dir_all(shot.parent().expect("folder")).expect("artifacts folder");
    let _ = std::fs::remove_file(&shot);
    let taken = browser(&url, &[&format!("--screenshot={}", shot.display())]);
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "screenshot: {}",
        String::from_utf8_lossy(&taken.stderr)
    );
    eprintln!("status page screenshot: {}", shot.display());
    sigterm(&pipeline);
    assert!(wait_exit(&mut pipeline, Duration::from_secs(30)).success());
}
